"""Checkpoints: exact resume after SIGKILL, SIGTERM, damaged steps, NaN guard, bad configs."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nopejax import experiment
from nopejax.data import pipeline
from nopejax.train import build, loop
from nopejax.train import checkpoint as checkpoint_lib
from nopejax.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402


def train_cmd(workdir, data_dir, *flags):
  return [
    sys.executable,
    "-m",
    "nopejax.train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    *flags,
  ]


def run(cmd):
  proc = subprocess.run(
    cmd,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def losses(workdir):
  """step -> loss, the last logged value winning (a resumed run logs some steps twice)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row:
        out[row["step"]] = row["loss"]
  return out


def start_and_wait(cmd, workdir, step):
  """Starts a run and returns it once metrics.jsonl has reached `step`."""
  proc = subprocess.Popen(
    cmd,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 300
  while time.time() < deadline:
    if (
      os.path.exists(os.path.join(workdir, "metrics.jsonl"))
      and max(losses(workdir), default=0) >= step
    ):
      return proc
    if proc.poll() is not None:
      raise AssertionError(proc.stderr.read()[-3000:])
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"run did not reach step {step}")


def final_params(workdir):
  return workdir_lib.latest_params(experiment.resolve(workdir_lib.load_config(workdir)), workdir)


def test_sigkill_then_resume_is_bit_exact(tmp_path):
  data_dir = tmp_path / "data"
  steps = ["--config.train.steps=24", "--config.train.checkpoint_every=5"]
  reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
  run(train_cmd(reference, data_dir, *steps))
  proc = start_and_wait(train_cmd(killed, data_dir, *steps), killed, 13)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(losses(killed)) < 24
  run(train_cmd(killed, data_dir, *steps))
  assert losses(killed) == losses(reference)  # every step, bit for bit
  jax.tree.map(np.testing.assert_array_equal, final_params(killed), final_params(reference))


def test_sigterm_saves_and_exits_zero(tmp_path):
  workdir = str(tmp_path / "run")
  cmd = train_cmd(
    workdir,
    tmp_path / "data",
    "--config.train.steps=100000",
    "--config.train.checkpoint_every=100000",
  )
  proc = start_and_wait(cmd, workdir, 3)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
  saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < 100000


def tiny_config(tmp_path, **train):
  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.train.eval_every = 0
  cfg.train.update(train)
  return cfg


def abstract_state(cfg):
  return build.build(experiment.resolve(cfg)).abstract


def largest_file(step_dir):
  files = [
    os.path.join(r, n)
    for r, _, ns in os.walk(step_dir)
    for n in ns
    if not n.startswith("nopejax_manifest")
  ]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_latest_falls_back_with_a_warning(tmp_path, caplog, damage):
  cfg = tiny_config(tmp_path, steps=20, checkpoint_every=10)
  workdir = str(tmp_path / "run")
  loop.run(experiment.resolve(cfg), workdir)
  victim = largest_file(os.path.join(workdir, "checkpoints", "20"))
  if damage == "truncate":
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  else:
    os.remove(victim)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=3)
  step, state, data_state = ckpt.restore_latest(abstract_state(cfg))
  ckpt.close()
  assert step == 10 and int(state["step"]) == 10 and data_state
  assert "checkpoint step 20 is damaged" in caplog.text
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "20"))  # kept, not deleted
  loop.run(experiment.resolve(cfg), workdir)  # resumes from 10 and saves 20 again
  assert sorted(
    int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()
  ) == [10, 20]


def test_close_returns_when_older_steps_were_deleted_before_their_manifest(tmp_path, monkeypatch):
  # A slow disk: every save is still running at the next poll, so the manifests of steps 1-3
  # are only started at close(), after max_to_keep=1 deleted steps 1 and 2.
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "run"), keep=1)
  monkeypatch.setattr(ckpt.manager, "is_saving_in_progress", lambda: True)
  for step in (1, 2, 3):
    ckpt.save(step, {"step": np.int32(step)}, {"position": step}, "{}")
    ckpt.manager.wait_until_finished()
  monkeypatch.undo()
  closing = threading.Thread(target=ckpt.close, daemon=True)
  closing.start()
  closing.join(timeout=300)  # it waited 30 minutes per deleted step before the fix
  assert not closing.is_alive()
  assert ckpt.steps() == [3]
  assert checkpoint_lib.check_manifest(ckpt.directory / "3") is None
  assert (ckpt.directory / "3" / checkpoint_lib.MANIFEST.format(0)).exists()


def test_incompatible_config_is_named_and_nothing_changes(tmp_path):
  cfg = tiny_config(tmp_path, steps=5, checkpoint_every=5)
  workdir = str(tmp_path / "run")
  loop.run(experiment.resolve(cfg), workdir)
  before = {
    os.path.join(r, n): os.path.getmtime(os.path.join(r, n))
    for r, _, ns in os.walk(workdir)
    for n in ns
    if n != "config.json"
  }
  cfg.model.d_ff = 96
  with pytest.raises(
    ValueError, match=r"\['mlp'\]\['down'\] has shape .*\(2, 64, 32\).*\(2, 96, 32\)"
  ):
    loop.run(experiment.resolve(cfg), workdir)
  after = {
    os.path.join(r, n): os.path.getmtime(os.path.join(r, n))
    for r, _, ns in os.walk(workdir)
    for n in ns
    if n != "config.json"
  }
  assert before == after


def test_nan_batches_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
  real_iter = pipeline.train_iter

  class Poisoned:
    """Real batches, but from the 6th on every token id is out of range (NaN embeddings)."""

    def __init__(self, *args, **kwargs):
      self.inner, self.count = real_iter(*args, **kwargs), 0

    def __next__(self):
      batch = dict(next(self.inner))
      self.count += 1
      if self.count > 5:
        batch["inputs"] = np.full_like(batch["inputs"], 10**6)
      return batch

    def get_state(self):
      return self.inner.get_state()

    def set_state(self, state):
      self.inner.set_state(state)

  monkeypatch.setattr(pipeline, "train_iter", Poisoned)
  cfg = tiny_config(tmp_path, steps=40, checkpoint_every=5, log_every=1, max_bad_steps=3)
  workdir = str(tmp_path / "run")
  with pytest.raises(RuntimeError, match=r"train\.max_bad_steps=3"):
    loop.run(experiment.resolve(cfg), workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["skipped_steps"] for r in rows if "loss" in r] == [0] * 5 + [1] * 3
  assert rows[-1]["step"] == 8 and "time_total_s" in rows[-1]  # the stopped run's account
  params = final_params(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert sorted(
    int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()
  ) == [5]


def test_checkpoint_of_nopejax_0_1_resumes_exactly(tmp_path):
  """0.1 kept an unused `rng` in the train state: its checkpoints restore, and the run resumed
  from one logs the losses of a run that never stopped."""
  cfg = tiny_config(tmp_path, steps=10, checkpoint_every=5, log_every=1)
  workdir = str(tmp_path / "run")
  loop.run(experiment.resolve(cfg), workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=3)
  ckpt.manager.delete(10)
  step, state, data_state = ckpt.restore_latest(abstract_state(cfg))
  ckpt.close()
  assert step == 5
  legacy = str(tmp_path / "legacy")
  # 0.1's layout: an unused `rng` in the state, process 0's iterator state as a JSON item.
  old = dict(state, rng=jax.random.key_data(jax.random.key(1)))
  manager = ocp.CheckpointManager(os.path.join(legacy, "checkpoints"))
  manager.save(
    5,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(old),
      data=ocp.args.JsonSave({"iterator": data_state}),
      config=ocp.args.JsonSave(json.loads(experiment.resolve(cfg).config_json)),
    ),
  )
  manager.wait_until_finished()
  manager.close()
  loop.run(experiment.resolve(cfg), legacy)
  resumed = losses(legacy)
  assert sorted(resumed) == [6, 7, 8, 9, 10]
  assert resumed == {k: v for k, v in losses(workdir).items() if k > 5}
