"""Sweeps: expand, run, skip finished runs, summarize, compare; and the demo launcher."""

import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from nopejax.tools import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expand_names_runs_by_their_overrides():
  module, arg = sweep.load_config_module(os.path.join(ROOT, "configs/demo.py") + ":steps=7")
  runs = sweep.expand(module, arg)
  assert [name for name, *_ in runs] == ["positions=rope", "positions=nope", "positions=smollm3"]
  assert [cfg.model.positions for _, _, cfg, _ in runs] == ["rope", "nope", "smollm3"]
  assert all(cfg.train.steps == 7 for _, _, cfg, _ in runs)


def test_arg_level_sweeps_rebuild_the_config():
  module, arg = sweep.load_config_module(os.path.join(ROOT, "configs/lengthgen.py"))
  runs = sweep.expand(module, arg)
  assert len(runs) == 6 * 5 * 3  # task x scheme x seed
  by_name = {name: (cfg, run_arg) for name, _, cfg, run_arg in runs}
  cfg, run_arg = by_name["scheme=rope,task=addition,seed=2"]
  assert run_arg == "scheme=rope,task=addition,seed=2"
  assert (cfg.model.positions, cfg.model.rope_fraction, cfg.data.tasks, cfg.train.seed) == (
    "rope",
    0.25,
    "addition",
    2,
  )
  cfg, _ = by_name["scheme=abs,task=copy,seed=0"]
  assert (cfg.model.positions, cfg.model.input_positions) == ("nope", "sinusoidal")
  assert {cfg.train.seed for _, _, cfg, _ in runs[:30]} == {0}  # seed-major
  assert (
    by_name["scheme=nope,task=parity,seed=0"][0].data.seq_len,
    by_name["scheme=nope,task=summation,seed=0"][0].data.seq_len,
  ) == (33, 23)
  narrow = sweep.expand(module, "schemes=nope+llama4,seeds=1")
  assert [n for n, *_ in narrow[:2]] == [
    "scheme=nope,task=copy,seed=0",
    "scheme=llama4,task=copy,seed=0",
  ]
  assert len(narrow) == 12
  later = sweep.expand(module, "schemes=nope,tasks=copy,seeds=2,first_seed=1")
  assert [n for n, *_ in later] == ["scheme=nope,task=copy,seed=1", "scheme=nope,task=copy,seed=2"]
  assert [c.train.seed for _, _, c, _ in later] == [1, 2]
  assert {c.opt.lr for _, _, c, _ in later} == {1e-3}
  assert {c.opt.lr for _, _, c, _ in sweep.expand(module, "tasks=reverse,lr=3e-3")} == {3e-3}
  with pytest.raises(ValueError, match="config arg schemes: unknown fope"):
    sweep.expand(module, "schemes=fope")
  with pytest.raises(ValueError, match="config arg tasks: unknown revrse; known: .*reverse"):
    sweep.expand(module, "tasks=copy+revrse")
  with pytest.raises(
    ValueError, match="config arg task: names one run's task; a sweep takes tasks=A[+]B"
  ):
    sweep.expand(module, "task=sort,runlocal")
  smoke = sweep.expand(module, "tasks=reverse+copy,seeds=3,runlocal")  # seed 0, first task
  assert [n for n, *_ in smoke] == [
    f"scheme={s},task=reverse,seed=0" for s in ("nope", "t5", "alibi", "rope", "abs")
  ]
  hybrids = sweep.expand(module, "hybrids")
  assert {c.model.positions for _, _, c, _ in hybrids} == {
    "smollm3",
    "alternate",
    "rnope_swa:16",
    "llama4:16",
  }


def test_lengthgen_rows_fit_each_task_exactly():
  """SEQ_LEN is each task's longest training document (minus one): no overflow, no waste."""
  import random

  from nopejax.data import tasks

  module, _ = sweep.load_config_module(os.path.join(ROOT, "configs/lengthgen.py"))
  for name, seq_len in module.SEQ_LEN.items():
    task, rng = tasks.TASKS[name], random.Random(0)
    longest = max(
      len(e.prompt.split()) + len(e.answer.split()) + 1
      for e in (task.make(rng, task.train_length) for _ in range(3000))
    )
    assert seq_len == longest, name


def test_print_launcher():
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "nopejax.sweep",
      "--config=configs/tiny.py",
      "--workdir=/tmp/s",
      "--launcher=print",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines() == [
    "python -m nopejax.train --config=configs/tiny.py --workdir=/tmp/s/positions=nope "
    "--config.model.positions=nope",
    "python -m nopejax.train --config=configs/tiny.py --workdir=/tmp/s/positions=rope "
    "--config.model.positions=rope",
  ]


def test_demo_launcher_runs_a_tiny_sweep_end_to_end(tmp_path):
  """The README's first command, on the tiny config: two runs, summary, table and plot."""
  workdir = tmp_path / "demo"
  env = dict(os.environ, JAX_PLATFORMS="cpu", NOPEJAX_DATA_DIR=str(tmp_path / "data"))
  cmd = ["bash", "launch/demo.sh", "--config=configs/tiny.py:steps=6", f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| positions=nope | 6 |" in proc.stdout and "| positions=rope | 6 |" in proc.stdout
  assert "**copy** (token_accuracy; * = beyond training length 6)" in proc.stdout
  results = json.loads((workdir / "eval" / "results.json").read_text())
  assert set(results) == {"positions=nope", "positions=rope"}
  assert set(results["positions=nope"]["copy"]) == {str(n) for n in range(1, 11)}
  assert (workdir / "eval" / "accuracy.png").stat().st_size > 10_000
  assert (workdir / "summary.md").exists()
  # A second call skips the finished runs instead of training again.
  proc = subprocess.run(
    cmd + ["--noevaluate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0 and proc.stdout.count("finished, skipping") == 2


def test_sigterm_stops_the_sweep_and_a_rerun_resumes(tmp_path):
  """Preemption saves the current run and ends the sweep; the next call resumes that run."""
  import signal
  import time

  workdir = tmp_path / "sweep"
  env = dict(os.environ, JAX_PLATFORMS="cpu", NOPEJAX_DATA_DIR=str(tmp_path / "data"))
  cmd = [
    sys.executable,
    "-m",
    "nopejax.sweep",
    "--config=configs/tiny.py:steps=100000",
    f"--workdir={workdir}",
    "--noevaluate",
  ]
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  metrics = workdir / "positions=nope" / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().strip()):
    assert time.time() < deadline and proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "positions=nope: preempted; run the sweep again to resume" in out
  assert not (workdir / "positions=rope").exists()  # the sweep stopped instead of moving on
  assert [s for s in os.listdir(workdir / "positions=nope" / "checkpoints") if s.isdigit()]


def test_sigterm_while_a_finished_run_is_evaluated_stops_the_sweep(tmp_path):
  """The TERM arrives after training returned: the evaluation completes, no next run starts."""
  workdir = tmp_path / "sweep"
  env = dict(os.environ, JAX_PLATFORMS="cpu", NOPEJAX_DATA_DIR=str(tmp_path / "data"))
  script = (
    "import os, signal, sys\n"
    "from nopejax.eval import runner\n"
    "from nopejax.tools import sweep\n"
    "evaluate = runner.evaluate_runs\n"
    "def evaluate_after_term(*args, **kwargs):\n"
    "  os.kill(os.getpid(), signal.SIGTERM)\n"
    "  return evaluate(*args, **kwargs)\n"
    "runner.evaluate_runs = evaluate_after_term\n"
    "runs = sweep.expand(*sweep.load_config_module('configs/tiny.py:steps=4'))\n"
    "sweep.run_local(runs, sys.argv[1])\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", script, str(workdir)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "positions=rope: stopped by SIGTERM before this run" in proc.stdout
  assert not (workdir / "positions=rope").exists()
  assert (workdir / "positions=nope" / "eval").is_dir()  # the run's evaluation finished


def test_text_passkey_stage_starts_each_scheme_from_its_language_model():
  module, _ = sweep.load_config_module(os.path.join(ROOT, "configs/text.py"))
  runs = sweep.expand(module, "passkey_from=runs/text")
  assert [cfg.train.init_from for _, _, cfg, _ in runs] == [
    "runs/text/positions=rope",
    "runs/text/positions=nope",
    "runs/text/positions=smollm3",
    "runs/text/positions=rnope_swa:128",
  ]
  cfg = runs[0][2]
  assert (cfg.data.kind, tuple(cfg.data.passkey_train_lengths), cfg.eval.kinds) == (
    "passkey",
    (256, 512),
    "passkey",
  )
  assert max(cfg.data.passkey_lengths) == 4096 and cfg.data.seq_len == 512
  assert sweep.expand(module, "")[0][2].train.init_from == ""  # the LM stage starts fresh
  half = sweep.expand(module, "passkey_from=runs/text,patterns=smollm3+rnope_swa:128")
  assert [cfg.model.positions for _, _, cfg, _ in half] == ["smollm3", "rnope_swa:128"]
  with pytest.raises(ValueError, match="config arg patterns: unknown alibi"):
    sweep.expand(module, "patterns=alibi")


def test_text_long_sweeps_the_second_edition_schemes_at_2048_on_the_flash_path():
  from nopejax import experiment

  module, _ = sweep.load_config_module(os.path.join(ROOT, "configs/text.py"))
  runs = sweep.expand(module, "long")
  names = [name for name, _, _, _ in runs]
  assert names == [
    "scheme=rope",
    "scheme=nope",
    "scheme=nope_ssmax",
    "scheme=smollm3",
    "scheme=rnope_swa",
    "scheme=llama4",
  ]
  exps = {name: experiment.resolve(cfg) for name, _, cfg, _ in runs}
  for exp in exps.values():  # the first edition's tokens per step, trained on the flash path
    assert (exp.data.seq_len, exp.data.batch_size, exp.model.flash_above) == (2048, 2, 1024)
    assert exp.eval.lm_lengths_for(exp.data.seq_len) == [1024, 2048, 4096, 8192, 16384, 32768]
    assert list(exp.eval.kind_names) == ["lm"]
  patterns = {name: [str(layer) for layer in exp.model.layers] for name, exp in exps.items()}
  assert patterns["scheme=smollm3"] == ["rope", "rope", "rope", "nope"]
  assert patterns["scheme=nope_ssmax"] == ["nope[ssmax]"] * 4
  assert patterns["scheme=rnope_swa"] == ["rope@sliding:512"] * 3 + ["nope"]
  assert patterns["scheme=llama4"] == ["rope@chunked:512"] * 3 + ["nope[llama4]"]
  assert exps["scheme=llama4"].model.temperature_floor_scale == 512.0
  stage2 = sweep.expand(module, "long,schemes=nope_ssmax+llama4,passkey_from=runs/text_long")
  assert [cfg.train.init_from for _, _, cfg, _ in stage2] == [
    "runs/text_long/scheme=nope_ssmax",
    "runs/text_long/scheme=llama4",
  ]
  cfg = stage2[0][2]
  assert tuple(cfg.data.passkey_train_lengths) == (1024, 2048) and cfg.eval.kinds == "passkey"
  assert max(cfg.data.passkey_lengths) == 16384
  small = sweep.expand(module, "long,runlocal,schemes=rnope_swa")[0][2]  # windows shrink too
  assert (small.model.positions, small.data.seq_len, small.model.flash_above) == (
    "rnope_swa:16",
    64,
    32,
  )
  with pytest.raises(ValueError, match="config arg schemes: unknown alibi"):
    sweep.expand(module, "long,schemes=alibi")


def test_lengthgen_knows_the_frontier_schemes_and_each_resolves():
  from nopejax import experiment

  module, _ = sweep.load_config_module(os.path.join(ROOT, "configs/lengthgen.py"))
  runs = sweep.expand(module, "frontier,tasks=copy,seeds=1")
  assert [n for n, *_ in runs] == [f"scheme={s},task=copy,seed=0" for s in module.FRONTIER]
  by_scheme = {name.split(",")[0][len("scheme=") :]: cfg for name, _, cfg, _ in runs}
  layer = lambda s: experiment.resolve(by_scheme[s]).model.layers[0]
  assert [layer(s).scheme for s in ("fire", "kerple_log", "xpos", "cope", "prope")] == [
    "fire",
    "kerple_log",
    "xpos",
    "cope",
    "prope",
  ]
  assert layer("nope_ssmax").query_scaling == "ssmax"
  assert experiment.resolve(by_scheme["t5_shared"]).model.t5_shared
  assert by_scheme["rope_random"].data.random_positions_max == 256
  assert by_scheme["t5_shared"].data.random_positions_max == 0
  assert "nope_random" not in by_scheme  # NoPE never reads positions: it would train as nope
  assert module.get_config("scheme=nope_random").data.random_positions_max == 256
  for scheme in set(module.SCHEMES) - set(module.FRONTIER):  # the rest resolve too
    experiment.resolve(module.get_config(f"scheme={scheme},task=sort"))


def test_slurm_launcher_submits_the_runs_as_one_job_array(tmp_path, monkeypatch):
  """The command `--launcher=slurm` submits (tests/test_slurm.py runs it on a real cluster)."""
  monkeypatch.chdir(ROOT)
  runs = sweep.expand(*sweep.load_config_module("configs/tiny.py:steps=6"))
  argv, logs = sweep.slurm_command(
    "configs/tiny.py:steps=6", str(tmp_path / "s"), runs, sbatch_args=["--time=1:00:00"]
  )
  assert logs == f"{tmp_path}/s/slurm-%A_%a.out"
  assert argv == [
    "sbatch",
    "--parsable",
    "--wait",
    "--array=0-1",
    f"--output={logs}",
    "--time=1:00:00",
    os.path.join(ROOT, "launch", "slurm.sbatch"),
    *("--module", "nopejax.sweep"),
    f"--config={ROOT}/configs/tiny.py:steps=6",  # absolute: the tasks run in the checkout
    f"--workdir={tmp_path}/s",
    "--launcher=slurm_task",
    "--evaluate",
  ]
  monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
  with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID='2' names none of the 2 runs"):
    sweep.run_slurm_task(runs, str(tmp_path / "s"))
