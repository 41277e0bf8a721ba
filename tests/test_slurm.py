"""SLURM, on a real controller: a one-node cluster on 127.0.0.1 (tests/slurm_cluster.py) runs
launch/slurm.sbatch as two tasks, requeues it, and runs a sweep as a job array."""

import json
import os
import re
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import checks
import pytest
import slurm_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402

# One multi-process job at a time (with test_launch's gloo jobs): they load the same 2 cores.
pytestmark = pytest.mark.xdist_group("multiprocess")
TIMEOUT_S = 300
SAVED = r"preempted \(SIGTERM\): saved step (\d+)"  # what each process logs on SIGTERM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  """The cluster, started once for this file; its daemons stop after the last test."""
  why = slurm_cluster.install()
  if why:
    pytest.skip(f"no SLURM cluster on this machine: {why}")
  with slurm_cluster.started(tmp_path_factory.mktemp("slurm")) as cluster:
    yield cluster


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The tiny config's data, built by the first job and read by the rest."""
  return str(tmp_path_factory.mktemp("data"))


def submit(slurm, out, *args):
  """The job id of `sbatch ARGS launch/slurm.sbatch ...`, submitted from the checkout (the
  submit directory, where slurm.sbatch finds the code) to run with this Python."""
  proc = slurm.command(
    "sbatch",
    "--parsable",
    f"--output={out}",
    *args,
    cwd=ROOT,
    env=dict(slurm.env, PYTHON=sys.executable, JAX_PLATFORMS="cpu"),
  )
  return proc.stdout.split(";")[0].strip()


def submit_tiny(slurm, out, workdir, data_dir, *train_flags):
  """`submit` of configs/tiny.py through launch/slurm.sbatch as 2 tasks on the one node."""
  return submit(
    slurm,
    out,
    "--ntasks=2",
    "--nodes=1",
    "launch/slurm.sbatch",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *train_flags,
  )


def finish(slurm, job, out):
  """Waits for the job to end and asserts it completed; returns its output."""
  slurm.wait(lambda: slurm.job_state(job)["JobState"] in slurm_cluster.ENDED, f"job {job}")
  text = open(out).read() if os.path.exists(out) else "(no output file)"
  state = slurm.job_state(job)
  assert state["JobState"] == "COMPLETED", f"{state}\n--- {out}:\n{text[-4000:]}{slurm.logs()}"
  return text


def steps_logged(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(line)["step"] for line in open(path).read().splitlines() if line.strip()]


def test_two_tasks_match_one_process(slurm, data_dir, tmp_path, monkeypatch):
  """sbatch --ntasks=2: jax.distributed starts from SLURM's environment alone, and the two
  processes log the losses one process logs on the same global batch."""
  out = str(tmp_path / "slurm.out")
  job = submit_tiny(
    slurm,
    out,
    tmp_path / "two",
    data_dir,
    "--config.train.steps=8",
    "--config.train.log_every=1",
    "--config.train.eval_every=4",
  )
  finish(slurm, job, out)
  # Each process writes the manifest of its own part of a checkpoint.
  saved = sorted(os.listdir(tmp_path / "two" / "checkpoints" / "8"))
  assert [f for f in saved if f.startswith("nopejax_manifest")] == [
    "nopejax_manifest.process_0.json",
    "nopejax_manifest.process_1.json",
  ]
  cfg = tiny.get_config()
  cfg.data.data_dir, cfg.train.steps, cfg.train.log_every, cfg.train.eval_every = (
    data_dir,
    8,
    1,
    4,
  )
  checks.assert_two_processes_match_one(tmp_path / "two", cfg, tmp_path / "one", monkeypatch)


def test_requeued_job_resumes_from_the_checkpoint_its_sigterm_saved(slurm, data_dir, tmp_path):
  """Requeued twice, once from outside (scontrol requeue: preemption) and once by the script
  itself (the USR1 that --signal sends before the time limit): each time both processes save
  on SIGTERM, the script runs again and training resumes, until the run's last step."""
  out, workdir, steps = str(tmp_path / "slurm.out"), str(tmp_path / "run"), 250
  job = submit_tiny(
    slurm,
    out,
    workdir,
    data_dir,
    f"--config.train.steps={steps}",
    "--config.train.checkpoint_every=100000",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
  )

  def training_past(step):
    logged = steps_logged(workdir)
    ended = slurm.job_state(job)["JobState"] in slurm_cluster.ENDED
    assert not ended, f"the job ended early:\n{open(out).read()[-4000:]}"
    return logged and logged[-1] > step

  saves = lambda: [int(s) for s in re.findall(SAVED, open(out).read())]
  slurm.wait(lambda: training_past(2), "training to start", timeout=TIMEOUT_S)
  slurm.command("scontrol", "requeue", job)
  slurm.wait(lambda: len(saves()) == 2, "both processes to save", timeout=TIMEOUT_S)
  slurm.wait(lambda: training_past(saves()[0] + 2), "training to resume", timeout=TIMEOUT_S)
  slurm.command("scancel", "--batch", "--signal=USR1", job)  # as before the time limit
  text = finish(slurm, job, out)
  assert slurm.job_state(job)["Restarts"] == "2", text[-4000:]
  for restart in (1, 2):
    assert f"job {job} restarted (SLURM_RESTART_COUNT={restart})" in text
  saved = [int(s) for s in re.findall(SAVED, text)]
  resumed = [int(s) for s in re.findall(r"resumed from step (\d+)", text)]
  assert len(saved) == 4 and saved[0] == saved[1] and saved[2] == saved[3], text[-4000:]
  assert 2 < saved[0] < saved[2] < steps
  assert resumed == [saved[0], saved[0], saved[2], saved[2]], text[-4000:]  # both processes
  assert steps_logged(workdir)[-1] == steps
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(steps)))


def sweep(slurm, workdir, data_dir, *args):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "nopejax.sweep",
      "--config=configs/tiny.py:steps=6",
      f"--workdir={workdir}",
      "--launcher=slurm",
      *args,
    ],
    cwd=ROOT,
    env=dict(slurm.env, JAX_PLATFORMS="cpu", NOPEJAX_DATA_DIR=data_dir),
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )


def test_sweep_runs_as_a_job_array_and_reports_every_run(slurm, data_dir, tmp_path):
  workdir = tmp_path / "sweep"
  proc = sweep(slurm, workdir, data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:] + slurm.logs()
  job = proc.stdout.split("job array ")[1].split(":")[0]
  for i, name in enumerate(("positions=nope", "positions=rope")):
    log = (workdir / f"slurm-{job}_{i}.out").read_text()
    assert f"[{i + 1}/2] {name}: training in {workdir / name}" in log
    assert (workdir / name / "eval").is_dir()  # evaluated by its own task
    assert f"| {name} | 6 |" in proc.stdout
    assert f"| {name} | 6 |" in (workdir / "summary.md").read_text()
  results = json.loads((workdir / "eval" / "results.json").read_text())
  assert set(results) == {"positions=nope", "positions=rope"}
  assert (workdir / "eval" / "accuracy.png").exists()


def test_sweep_names_each_run_its_job_array_did_not_finish_and_its_log(slurm, data_dir, tmp_path):
  workdir = tmp_path / "sweep"
  # Tasks whose Python is /bin/false: both fail at once.
  proc = sweep(slurm, workdir, data_dir, "--sbatch_args=--export=ALL,PYTHON=/bin/false")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  job = proc.stdout.split("job array ")[1].split(":")[0]
  assert proc.stderr.strip().splitlines()[-1] == (
    f"job array {job}: run positions=nope did not finish; see {workdir}/slurm-{job}_0.out; "
    f"run positions=rope did not finish; see {workdir}/slurm-{job}_1.out"
  )
