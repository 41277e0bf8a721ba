"""Training: the real command, the loss going down, schedules, accumulation, bad input."""

import glob
import gzip
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest
from jax.profiler import ProfileData

from nopejax import data as data_lib
from nopejax import experiment
from nopejax.data import pipeline
from nopejax.parallel import mesh as mesh_lib
from nopejax.train import efficiency, loop, optimizer
from nopejax.train import spec as train_spec
from nopejax.train import step as step_lib
from nopejax.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402

REAL_TRAIN_ITER = pipeline.train_iter


def run_cli(module, *args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  if check and proc.returncode:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def tiny_config(tmp_path, **overrides):
  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path / "data")
  for key, value in overrides.items():
    group, field = key.split(".")
    cfg[group][field] = value
  return cfg


def _model_spec(cfg):
  return experiment.resolve(cfg).model


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_trains_through_the_real_command(tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli(
    "nopejax.train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--config.train.steps=10",
    "--config.model.d_model=48",
    "--config.model.positions=rope,nope",
    "--config.train.profile_steps=(6, 2)",
  )
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["d_model"] == 48 and config["model"]["positions"] == "rope,nope"
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [5, 10]
  assert all(k in rows[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s"))
  assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
  # The override reached the model: the trained parameters have the overridden width.
  params = workdir_lib.latest_params(
    experiment.resolve(workdir_lib.load_config(str(workdir))), str(workdir)
  )
  assert params["embedding"].shape[1] == 48
  # Every row's efficiency: MFU by both conventions from the first row's FLOP counts and peak.
  first = rows[0]
  assert first["flops_per_token"] < first["flops_per_token_full_attention"]
  assert first["peak_source"] == "measured fp32 matmul" and first["peak_flops"] > 0
  for row in rows:
    for mfu, flops in (
      ("mfu", "flops_per_token"),
      ("mfu_full_attention", "flops_per_token_full_attention"),
    ):
      assert row[mfu] == pytest.approx(row["tokens_per_s"] * first[flops] / first["peak_flops"])
    assert row["step_s"] > 0 and row["peak_memory_gib"] > 0.05 and 0 < row["goodput"] < 1
  # The goodput account closes the log and the output; its parts add up to the wall time.
  account = read_metrics(workdir)[-1]
  assert account["step"] == 10
  parts = [account[f"time_{k}_s"] for k in (*efficiency.GOODPUT_KINDS, "other")]
  assert sum(parts) == pytest.approx(account["time_total_s"])
  assert account["goodput"] == pytest.approx(account["time_step_s"] / account["time_total_s"])
  for kind in ("compile", "restore", "checkpoint", "profile", "step"):
    assert account[f"time_{kind}_s"] > 0, kind
  assert re.search(r"goodput \d+\.\d% of [\d.]+ s wall", proc.stdout)
  # The profile: where TensorBoard's profile plugin looks, and a Perfetto trace beside it,
  # holding the two profiled steps and the train step's program.
  (run,) = glob.glob(str(workdir / "tensorboard" / "plugins" / "profile" / "*"))
  (xplane,) = glob.glob(os.path.join(run, "*.xplane.pb"))
  events = [
    e for plane in ProfileData.from_file(xplane).planes for line in plane.lines for e in line.events
  ]
  assert sorted(dict(e.stats)["step_num"] for e in events if e.name == "train") == [6, 7]
  assert any("train_step" in e.name for e in events)
  with gzip.open(os.path.join(run, "perfetto_trace.json.gz")) as f:
    trace = json.load(f)["traceEvents"]
  assert sorted(int(e["args"]["step_num"]) for e in trace if e.get("name") == "train") == [6, 7]


class SlowBatches:
  """The real batches, each 0.15 s late: an input pipeline slower than the step."""

  def __init__(self, data_cfg, **kwargs):
    self.inner = REAL_TRAIN_ITER(data_cfg, **kwargs)

  def __next__(self):
    time.sleep(0.15)
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)

  def close(self):
    self.inner.close()


def test_goodput_puts_a_slow_input_pipeline_in_data_wait(tmp_path, monkeypatch):
  cfg = tiny_config(tmp_path, **{"train.steps": 12, "train.log_every": 4, "train.eval_every": 0})
  monkeypatch.setattr(pipeline, "train_iter", SlowBatches)
  loop.run(experiment.resolve(cfg), str(tmp_path / "run"))
  account = read_metrics(tmp_path / "run")[-1]
  # 12 batches each 0.15 s late, behind steps of a few ms: the wait is the input's, not the step's.
  assert account["time_data_s"] > max(account["time_step_s"], 0.5 * 12 * 0.15)


def test_loss_falls_on_copy(tmp_path):
  cfg = tiny_config(
    tmp_path,
    **{
      "train.steps": 150,
      "train.log_every": 25,
      "train.eval_every": 0,
      "train.checkpoint_every": 150,
    },
  )
  loop.run(experiment.resolve(cfg), str(tmp_path / "run"))
  losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
  # Below the entropy of a uniform guess over the 26 letters copied: the copy has been learned
  # in part, not only the answer format.
  assert losses[-1] < 0.7 * losses[0] and losses[-1] < np.log(26), losses


@pytest.mark.parametrize("name", ["cosine", "wsd", "constant"])
def test_schedule_shapes(name):
  opt = train_spec.opt_config()
  opt.schedule, opt.lr, opt.warmup_steps, opt.min_lr_ratio, opt.decay_fraction = (
    name,
    1.0,
    10,
    0.1,
    0.2,
  )
  lr = optimizer.schedule(opt, 100)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  end = float(lr(100))
  if name == "cosine":
    assert float(lr(55)) == pytest.approx(0.55, abs=1e-6)  # halfway down the cosine
    assert end == pytest.approx(0.1)
  elif name == "wsd":
    assert float(lr(50)) == pytest.approx(1.0) and float(lr(80)) == pytest.approx(1.0)
    assert float(lr(90)) == pytest.approx(0.55)  # halfway through the linear decay
    assert end == pytest.approx(0.1)
  else:
    assert float(lr(50)) == pytest.approx(1.0) and end == pytest.approx(1.0)


def test_weight_decay_skips_norms_and_biases():
  params = {
    "embedding": 1,
    "layers": {"block_0": {"attn_norm": {"scale": 1}, "attn": {"q": 1, "q_bias": 1, "t5_bias": 1}}},
  }
  mask = optimizer.decay_mask(params)
  assert mask["embedding"] and mask["layers"]["block_0"]["attn"]["q"]
  assert not mask["layers"]["block_0"]["attn_norm"]["scale"]
  assert not mask["layers"]["block_0"]["attn"]["q_bias"]
  assert not mask["layers"]["block_0"]["attn"]["t5_bias"]


def _one_step(cfg, batch, microbatches):
  spec = _model_spec(cfg)
  tx, lr_fn = optimizer.make(cfg.opt, cfg.train.steps)
  state = step_lib.init_state(spec, tx, 0)
  step = jax.jit(
    lambda s, b: step_lib.train_step(
      s, b, spec=spec, tx=tx, lr_fn=lr_fn, z_loss=1e-4, microbatches=microbatches
    )
  )
  return step(state, batch)


def test_gradient_accumulation_equals_large_batch(tmp_path):
  cfg = tiny_config(tmp_path)
  batch = next(data_lib.train_iter(experiment.resolve(cfg).data))
  one, m1 = _one_step(cfg, batch, 1)
  four, m4 = _one_step(cfg, batch, 4)
  assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-6)
  np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    one["params"],
    four["params"],
  )


def test_non_finite_step_is_skipped(tmp_path):
  cfg = tiny_config(tmp_path)
  batch = dict(next(data_lib.train_iter(experiment.resolve(cfg).data)))
  spec = _model_spec(cfg)
  tx, lr_fn = optimizer.make(cfg.opt, cfg.train.steps)
  state = step_lib.init_state(spec, tx, 0)
  batch["inputs"] = np.full_like(batch["inputs"], 10**6)  # out of range: NaN embeddings
  # Jitted, as the loop runs it (eagerly, forward's checked mode refuses the ids up front).
  step = jax.jit(
    lambda state, batch: step_lib.train_step(
      state, batch, spec=spec, tx=tx, lr_fn=lr_fn, z_loss=0.0, microbatches=1
    )
  )
  new, metrics = step(state, batch)
  assert int(metrics["skipped"]) == 1 and int(new["bad_steps"]) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), new["params"], state["params"])


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("train.steps", 0, "train.steps"),
    ("opt.lr", 5.0, "opt.lr"),
    ("opt.lr", -1e-3, "opt.lr"),
    ("data.batch_size", 0, "data.batch_size"),
    ("opt.schedule", "linear", "opt.schedule"),
    ("opt.microbatches", 3, "opt.microbatches"),
    ("train.profile_steps", (0, 2), "train.profile_steps"),
    ("train.profile_steps", (3,), "train.profile_steps"),
  ],
)
def test_bad_values_fail_before_compiling(tmp_path, key, value, message):
  cfg = tiny_config(tmp_path, **{key: value})
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    loop.run(experiment.resolve(cfg), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="--workdir"):
    loop.run(experiment.resolve(tiny_config(tmp_path)), str(blocker / "run"))


def test_batch_not_divisible_by_data_axes(tmp_path):
  cfg = tiny_config(tmp_path)
  cfg.data.batch_size = 6
  with pytest.raises(ValueError, match=r"data\.batch_size=6"):
    exp = experiment.resolve(cfg)
    mesh_lib.check_divisible(exp.model, exp.mesh, exp.data.batch_size, 4)


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--config.model.no_such_key=1", "no_such_key"),
    ("--config.train.steps=many", "train.steps"),
  ],
)
def test_cli_rejects_unknown_keys_and_wrong_types(tmp_path, flag, message):
  proc = run_cli(
    "nopejax.train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", flag, check=False
  )
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not (tmp_path / "run").exists()
