"""Storage at pod scale: gs:// workdirs on a real GCS API, checkpoints every process agrees on,
a global data position that resumes on another process count, and restarts that load compiled
programs from the cache."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
from conftest import no_local_gs_dir

from nopejax import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_for(tmp_path, bucket=None):
  """A subprocess environment: CPU, this test's own caches, the emulator when given."""
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XDG_CACHE_HOME=str(tmp_path / "cache"),
    **(bucket.env if bucket else {}),
  )


def train_cmd(workdir, data_dir, *flags, process=None, port=None, processes=2):
  cmd = [
    sys.executable,
    "-m",
    "nopejax.train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    "--config.train.progress=False",
    *flags,
  ]
  if process is not None:
    cmd += [
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={processes}",
      f"--process_id={process}",
    ]
  return cmd


def losses(workdir):
  """step -> loss, the last logged value winning (a resumed run logs some steps twice)."""
  path = storage.path(workdir) / "metrics.jsonl"
  out = {}
  for line in path.read_text().splitlines() if path.exists() else []:
    row = json.loads(line)
    if "loss" in row:
      out[row["step"]] = row["loss"]
  return out


def rows(workdir):
  return [json.loads(line) for line in (storage.path(workdir) / "metrics.jsonl").open()]


def start(cmds, env):
  return [
    subprocess.Popen(
      cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    for cmd in cmds
  ]


def finish(procs, expect=0):
  """Waits for every process; fails with their stderr tails unless each exits `expect`."""
  codes = [p.wait(timeout=900) for p in procs]
  tails = "".join(f"\n--- process {i}:\n{p.stderr.read()[-2500:]}" for i, p in enumerate(procs))
  assert codes == [expect] * len(procs), tails
  return tails


def kill_at(procs, workdir, step):
  """SIGKILLs every process once metrics.jsonl reaches `step` (the training processes
  themselves: no shell in between)."""
  deadline = time.time() + 600
  while max(losses(workdir), default=0) < step:
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      raise AssertionError(
        "".join(f"\n--- process {i}:\n{p.stderr.read()[-2500:]}" for i, p in enumerate(procs))
      )
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()


def run_cli(env, *args, cwd=ROOT):
  proc = subprocess.run(
    [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_storage_paths_keep_urls_and_absolutize_local(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.path("gs://b/run")) == "gs://b/run"
  assert os.fspath(storage.path("run")) == str(tmp_path / "run")
  assert storage.is_remote("s3://b/x") and not storage.is_remote("/gs:/x")


def test_gcs_workdir_sigkill_resume_evaluate_sweep_report(tmp_path, gcs_bucket):
  """Train on gs://, SIGKILL, resume: every loss equals an uninterrupted local run's, bit for bit;
  then evaluate it, sweep two runs and report them, all in the bucket."""
  steps = ["--config.train.steps=20", "--config.train.checkpoint_every=5"]
  local_env, gcs_env = env_for(tmp_path), env_for(tmp_path, gcs_bucket)
  reference = tmp_path / "reference"
  run_cli(local_env, *train_cmd(reference, tmp_path / "data", *steps)[2:])

  workdir, data_dir = f"{gcs_bucket.url}/run", f"{gcs_bucket.url}/data"
  procs = start([train_cmd(workdir, data_dir, *steps)], gcs_env)
  kill_at(procs, workdir, 12)
  assert max(losses(workdir)) < 20
  run_cli(gcs_env, *train_cmd(workdir, data_dir, *steps)[2:])
  assert losses(workdir) == losses(reference)  # every step, bit for bit
  assert gcs_bucket.objects("run/checkpoints/20/")
  assert gcs_bucket.objects("run/params/") and gcs_bucket.objects("run/tensorboard/")
  assert gcs_bucket.objects("data/nopejax_tasks/")  # the data dir was published to the bucket

  out = run_cli(gcs_env, "nopejax.evaluate", f"--workdir={workdir}").stdout
  assert "copy" in out
  assert storage.read_json(f"{workdir}/eval/results.json")
  assert gcs_bucket.objects("run/eval/accuracy.png")

  sweep = f"{gcs_bucket.url}/sweep"
  run_cli(
    dict(gcs_env, NOPEJAX_DATA_DIR=data_dir),
    "nopejax.sweep",
    "--config=configs/lengthgen.py:runlocal,schemes=nope+rope",
    f"--workdir={sweep}",
  )
  report = run_cli(gcs_env, "nopejax.report", f"--sweep={sweep}", f"--out={sweep}/report.md")
  for scheme in ("nope", "rope"):
    assert f"| {scheme} |" in report.stdout
  assert (storage.path(sweep) / "report.md").read_text()
  no_local_gs_dir(tmp_path, ROOT)


@pytest.mark.xdist_group("multiprocess")  # one gloo job at a time: they load the same 2 cores
def test_two_processes_sigkilled_resume_on_one_with_the_same_batches(tmp_path):
  """A two-process run (one device each) on packed data, SIGKILLed mid-run, resumed by one
  process with two devices: every loss, before the kill and after the resume, equals an
  uninterrupted one-process run's (the data order is global; the mesh is the same shape, and
  only the processes' share of the all-reduce differs)."""
  env, data_dir = env_for(tmp_path), tmp_path / "data"
  two_devices = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  steps = ["--config.train.steps=20", "--config.train.checkpoint_every=5"]
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  finish(start([train_cmd(reference, data_dir, *steps)], two_devices))
  port = _free_port()
  kill_at(
    start([train_cmd(killed, data_dir, *steps, process=i, port=port) for i in range(2)], env),
    killed,
    12,
  )
  assert max(losses(killed)) < 20
  tails = finish(start([train_cmd(killed, data_dir, *steps)], two_devices))
  assert "resumed from step" in tails
  got, want = losses(killed), losses(reference)
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose(
    [got[s] for s in sorted(want)], [want[s] for s in sorted(want)], rtol=1e-5
  )


@pytest.mark.xdist_group("multiprocess")
def test_two_processes_agree_to_skip_a_step_damaged_on_one(tmp_path):
  """A file only process 1 wrote is truncated in the newest step: both processes fall back to the
  previous step (a decision they share), and it is moved aside, not deleted."""
  env, data_dir, workdir = env_for(tmp_path), tmp_path / "data", tmp_path / "run"
  port = _free_port()
  steps = ["--config.train.steps=10", "--config.train.checkpoint_every=5"]
  cmds = lambda port: [train_cmd(workdir, data_dir, *steps, process=i, port=port) for i in range(2)]
  finish(start(cmds(port), env))
  step_dir = workdir / "checkpoints" / "10"
  own = [
    p
    for rel, p in storage.walk_files(step_dir)
    if "process_1" in rel and not rel.startswith("nopejax_manifest") and p.stat().length > 8
  ]
  assert own, sorted(rel for rel, _ in storage.walk_files(step_dir))
  victim = max(own, key=lambda p: p.stat().length)
  with open(victim, "r+b") as f:
    f.truncate(victim.stat().length // 2)
  steps[0] = "--config.train.steps=12"
  tails = finish(start(cmds(_free_port()), env))
  assert tails.count("checkpoint step 10 is damaged") == 2, tails  # both processes said so
  assert (workdir / "checkpoints_damaged" / "10").is_dir()
  assert [r["step"] for r in rows(workdir) if "loss" in r][-7:] == list(range(6, 13))


def test_corrupt_metadata_in_newest_step_falls_back(tmp_path):
  env, workdir = env_for(tmp_path), tmp_path / "run"
  steps = ["--config.train.steps=10", "--config.train.checkpoint_every=5"]
  run_cli(env, *train_cmd(workdir, tmp_path / "data", *steps)[2:])
  metadata = [
    p for rel, p in storage.walk_files(workdir / "checkpoints" / "10") if "METADATA" in rel
  ]
  assert metadata
  for p in metadata:
    p.write_text("{not json")
  steps[0] = "--config.train.steps=12"
  proc = run_cli(env, *train_cmd(workdir, tmp_path / "data", *steps)[2:])
  assert "checkpoint step 10 is damaged" in proc.stderr
  assert (workdir / "checkpoints_damaged" / "10").is_dir()
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [5, 10, 12]


def test_restart_loads_compiled_steps_from_the_cache(tmp_path):
  """The first run compiles and fills train.compilation_cache_dir; after a SIGKILL the restarted
  run loads every program from it (cache hits, no misses) before its first step."""
  env, workdir, cache = env_for(tmp_path), tmp_path / "run", tmp_path / "jax_cache"
  cmd = train_cmd(
    workdir,
    tmp_path / "data",
    f"--config.train.compilation_cache_dir={cache}",
    "--config.train.steps=200",
    "--config.train.checkpoint_every=5",
  )
  kill_at(start([cmd], env), workdir, 7)
  cold = rows(workdir)[0]
  assert cold["compile_cache_misses"] > 0 and cold["compile_cache_hits"] == 0
  assert any(cache.iterdir())
  kill_at(start([cmd], env), workdir, max(losses(workdir)) + 2)
  warm = [r for r in rows(workdir) if "startup_s" in r][-1]
  assert warm["step"] % 5 == 1  # the first step after a checkpoint
  assert warm["compile_cache_hits"] > 0 and warm["compile_cache_misses"] == 0, warm


def test_bench_checkpoint_reports_blocking_times(tmp_path):
  """The README's checkpoint benchmark, at the tiny model: one JSON line with both settings."""
  out = run_cli(
    env_for(tmp_path),
    "nopejax.bench_checkpoint",
    "--config=configs/tiny.py",
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--saves=2",
    "--gap_s=0.5",
    f"--dir={tmp_path}",
  ).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert len(result["save_blocking_s_manifests=True"]) == 2
  assert len(result["save_blocking_s_manifests=False"]) == 2
  assert result["params"] > 0 and result["manifest_in_loop_s"] > 0


SYNCED = """
import sys
import jax
from nopejax import storage
jax.process_index = lambda: int(sys.argv[1])
def build(local):
  local.mkdir(parents=True, exist_ok=True)
  (local / "model").write_text("trained by process " + sys.argv[1])
print((storage.synced_dir(sys.argv[2], "tokenizers/sp", build, poll_s=0.1) / "model").read_text())
"""


def test_process_0_alone_builds_a_bucket_directory_the_others_wait_and_download(
  tmp_path, gcs_bucket
):
  """Process 1 (another host: its own mirror) starts first and waits; process 0 trains and
  publishes; process 1 downloads what process 0 trained, never training itself."""
  root = f"{gcs_bucket.url}/data"
  hosts = [dict(env_for(tmp_path / f"host{i}", gcs_bucket)) for i in (0, 1)]
  waiting = subprocess.Popen(
    [sys.executable, "-c", SYNCED, "1", root],
    cwd=ROOT,
    env=hosts[1],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  time.sleep(3)
  assert waiting.poll() is None  # still waiting for process 0
  first = subprocess.run(
    [sys.executable, "-c", SYNCED, "0", root],
    cwd=ROOT,
    env=hosts[0],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert first.returncode == 0, first.stderr[-2000:]
  out, err = waiting.communicate(timeout=300)
  assert waiting.returncode == 0, err[-2000:]
  assert first.stdout.strip() == out.strip() == "trained by process 0"
  assert "data/tokenizers/sp/.nopejax_complete" in gcs_bucket.objects("data/")
