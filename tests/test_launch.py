"""Launchers: dry runs print sane commands; two processes on 127.0.0.1 match one process."""

import os
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import checks
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402


def bash(*args, env=None, logs=()):
  """Runs a launcher; a failure shows its stderr and the tails of `logs` (other processes')."""
  proc = subprocess.run(
    ["bash", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, **(env or {})),
  )
  tails = "".join(
    f"\n--- {log}:\n{open(log).read()[-2000:]}" for log in logs if os.path.exists(log)
  )
  assert proc.returncode == 0, proc.stderr[-3000:] + tails
  return proc.stdout


def test_tpu_vm_dry_run():
  out = bash(
    "launch/tpu_vm.sh",
    "--dry-run",
    "--name",
    "slice",
    "--zone",
    "us-east5-a",
    "--type",
    "v5p-32",
    "--",
    "--config=configs/smollm3_3b.py",
    "--workdir=/mnt/run",
  )
  lines = out.strip().splitlines()
  assert lines[0].startswith(
    "gcloud compute tpus tpu-vm create slice --zone us-east5-a --accelerator-type v5p-32"
  )
  assert all("--worker=all" in line for line in lines if " ssh " in line or " scp " in line)
  assert lines[-1].endswith("-m nopejax.train --config=configs/smollm3_3b.py --workdir=/mnt/run '")


def test_tpu_vm_multislice_dry_run_creates_a_queued_resource():
  out = bash(
    "launch/tpu_vm.sh",
    "--dry-run",
    "--name",
    "pods",
    "--zone",
    "us-east5-a",
    "--type",
    "v5p-32",
    "--num_slices",
    "2",
    "--",
    "--config=configs/smollm3_3b.py",
    "--workdir=/mnt/run",
  )
  lines = out.strip().splitlines()
  assert lines[0] == "would create: 2 slices of v5p-32 as queued resource pods"
  assert lines[1].startswith(
    "gcloud compute tpus queued-resources create pods --zone us-east5-a --accelerator-type v5p-32"
  )
  assert "--node-count 2 --node-prefix pods" in lines[1]
  remote = [line for line in lines if " ssh " in line or " scp " in line]
  assert len(remote) == 3
  assert all("queued-resources" in line and "--node=all --worker=all" in line for line in remote)
  assert lines[-1].endswith("--workdir=/mnt/run --config.mesh.dcn_data=2 '")


def test_slurm_dry_run():
  out = bash(
    "launch/slurm.sbatch", "--dry-run", "--config=configs/smollm3_3b.py", "--workdir=/shared/run"
  )
  assert out.startswith("srun --kill-on-bad-exit=1 ")
  assert "--gpus-per-task" not in out and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in out
  assert out.endswith("-m nopejax.train --config=configs/smollm3_3b.py --workdir=/shared/run \n")
  # On GPU nodes (sbatch --gpus-per-node) each task gets one GPU, and the CPUs sbatch gave it.
  out = bash(
    "launch/slurm.sbatch",
    "--dry-run",
    "--module",
    "nopejax.sweep",
    "--config=configs/tiny.py",
    "--workdir=/shared/sweep",
    env={"SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "12"},
  )
  assert out.startswith(
    "srun --kill-on-bad-exit=1 --cpus-per-task=12 --gpus-per-task=1 "
    "env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "
  )
  assert out.endswith("-m nopejax.sweep --config=configs/tiny.py --workdir=/shared/sweep \n")


def test_multiprocess_dry_run():
  out = (
    bash(
      "launch/multiprocess.sh",
      "--dry-run",
      "-n",
      "3",
      "--port",
      "4444",
      "--",
      "--config=configs/tiny.py",
      "--workdir=/tmp/x",
    )
    .strip()
    .splitlines()
  )
  assert len(out) == 3
  for i, line in enumerate(out):
    assert (
      f"--coordinator_address=127.0.0.1:4444 --num_processes=3 --process_id={i} "
      "--config=configs/tiny.py --workdir=/tmp/x" in line
    )


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.xdist_group("multiprocess")  # one gloo job at a time: they load the same 2 cores
def test_two_processes_match_one(tmp_path, monkeypatch):
  data_dir, steps = str(tmp_path / "data"), 8
  flags = [
    f"--config.data.data_dir={data_dir}",
    f"--config.train.steps={steps}",
    "--config.train.log_every=1",
    "--config.train.eval_every=4",
  ]
  bash(
    "launch/multiprocess.sh",
    "-n",
    "2",
    "--port",
    str(_free_port()),
    "--",
    "--config=configs/tiny.py",
    f"--workdir={tmp_path / 'two'}",
    *flags,
    env={"PYTHON": sys.executable},
    logs=["/tmp/nopejax_process_1.log"],
  )
  cfg = tiny.get_config()
  cfg.data.data_dir, cfg.train.steps, cfg.train.log_every, cfg.train.eval_every = (
    data_dir,
    steps,
    1,
    4,
  )
  checks.assert_two_processes_match_one(tmp_path / "two", cfg, tmp_path / "one", monkeypatch)


@pytest.mark.xdist_group("multiprocess")
def test_sigterm_to_one_of_two_processes_saves_the_same_step_and_exits_zero(tmp_path):
  port, workdir = _free_port(), tmp_path / "run"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "nopejax.train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.train.steps=100000",
        "--config.train.checkpoint_every=100000",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      raise AssertionError(
        "\n".join(f"process {i}: {p.stderr.read()[-2000:]}" for i, p in enumerate(procs))
      )
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # the process that does not write metrics
  codes = [p.wait(timeout=120) for p in procs]
  assert codes == [0, 0], procs[0].stderr.read()[-2000:] + procs[1].stderr.read()[-2000:]
  saved = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < 100000
