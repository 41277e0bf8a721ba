"""Sweeps behind `python -m nopejax.sweep`: the config file's `get_sweep(arg)` (a list of
{dotted key: value} overrides) expanded into runs, each in DIR/<its overrides>.

`run_one` trains one run (skipped when finished, resumed when it saved) and evaluates it into
DIR/<run>/eval (reused while its newest checkpoint and eval group are unchanged); `report`
compares them all in one table and plot in DIR/eval and writes a summary of final metrics to
DIR/summary.md. `run_local` runs each here, one after another, then the report; `run_slurm`
submits them as one SLURM job array whose task i is run i, waits, then writes the same report;
`commands` gives one train command per run instead.
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys

from nopejax import cli, experiment, storage
from nopejax.eval import runner
from nopejax.train import loop, preemption


def load_config_module(spec):
  """`path[:arg]` -> (module, arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ValueError(f"--config: no such file {path!r}")
  module_spec = importlib.util.spec_from_file_location("nopejax_sweep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, arg or None


def run_name(overrides):
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()).replace("/", "_")


def _merge_arg(arg, overrides):
  """The config arg with the sweep's arg-level (undotted) keys set."""
  items = [i for i in (arg or "").split(",") if i and i.partition("=")[0] not in overrides]
  items += [f"{k}={v}" for k, v in overrides.items()]
  return ",".join(items)


def expand(module, arg):
  """[(name, overrides, config, arg)] for every point of the sweep.

  A sweep entry's undotted keys are config-file arguments (`scheme=t5`, parsed by get_config);
  dotted keys (`model.positions`) set config fields directly.
  """
  if not hasattr(module, "get_sweep"):
    raise ValueError("--config: the config file defines no get_sweep(arg)")
  runs = []
  for overrides in module.get_sweep(arg):
    arg_level = {k: v for k, v in overrides.items() if "." not in k}
    run_arg = _merge_arg(arg, arg_level) if arg_level else arg
    cfg = module.get_config(run_arg)
    for key, value in overrides.items():
      if "." not in key:
        continue
      group, _, field = key.rpartition(".")
      node = cfg
      for part in group.split("."):
        node = node[part]
      if field not in node:
        raise ValueError(f"sweep: unknown config key {key!r}")
      node[field] = value
    runs.append((run_name(overrides), overrides, cfg, run_arg))
  return runs


def finished(cfg, workdir):
  workdir = storage.path(workdir)
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return False
  lines = path.read_text().splitlines()
  steps = [json.loads(line).get("step", 0) for line in lines if line.strip()]
  return bool(steps) and max(steps) >= cfg.train.steps and (workdir / "checkpoints").is_dir()


def summary(runs, workdir):
  """Markdown table of each run's last logged metrics."""
  keys = ("loss", "accuracy", "val_loss", "val_accuracy", "tokens_per_s")
  lines = ["| run | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
  for name, *_ in runs:
    last = {}
    path = storage.path(workdir) / name / "metrics.jsonl"
    if path.exists():
      for line in path.read_text().splitlines():
        last.update(json.loads(line))
    cells = [f"{last[k]:.4g}" if k in last else "" for k in keys]
    lines.append(f"| {name} | {last.get('step', '')} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def commands(config, workdir, runs):
  """One `python -m nopejax.train` command line per run of `expand`."""
  path = config.partition(":")[0]
  lines = []
  for name, overrides, _, run_arg in runs:
    run_config = f"{path}:{run_arg}" if run_arg else path
    flags_text = "".join(
      f" --config.{k}={shlex.quote(str(v))}" for k, v in overrides.items() if "." in k
    )
    lines.append(
      f"python -m nopejax.train --config={run_config} "
      f"--workdir={os.path.join(workdir, name)}{flags_text}"
    )
  return lines


def run_one(runs, i, workdir, *, evaluate=True):
  """Trains run `i` of `runs` in DIR/<its name> (skipped when finished, resumed when it saved)
  and, with `evaluate`, evaluates it into DIR/<its name>/eval (reused while unchanged).

  Returns False when SIGTERM stopped the run before its last step, else True.
  """
  name, _, cfg, _ = runs[i]
  run_dir = os.fspath(storage.path(workdir) / name)
  tag = f"[{i + 1}/{len(runs)}] {name}"
  if finished(cfg, run_dir):
    print(f"{tag}: finished, skipping")
  else:
    print(f"{tag}: training in {run_dir}")
    try:
      loop.run(experiment.resolve(cfg), run_dir)
    except (ValueError, RuntimeError) as e:
      raise RunError(f"error in run {name}: {e}") from None
    if not finished(cfg, run_dir):
      # The run saved and returned early (SIGTERM, preemption): the next call resumes it.
      print(f"{tag}: preempted; run the sweep again to resume")
      return False
  if evaluate:  # now, so a sweep stopped part-way has its finished runs evaluated
    runner.evaluate_runs([run_dir], cache=True)
  return True


def report(runs, workdir, *, evaluate=True):
  """DIR/summary.md of every run's last metrics and, with `evaluate`, their comparison in one
  table and plot in DIR/eval (each run's own evaluation is reused)."""
  text = summary(runs, workdir)
  storage.write_text(storage.path(workdir) / "summary.md", text + "\n")
  print(text)
  if evaluate:
    results, exp = runner.evaluate_runs(
      [os.fspath(storage.path(workdir) / name) for name, *_ in runs], cache=True
    )
    out = os.fspath(storage.path(workdir) / "eval")
    print(runner.write_outputs(results, exp, out))
    print(f"wrote {out}/results.json, tables.md, accuracy.png")


def run_local(runs, workdir, *, evaluate=True):
  """Runs `run_one` for each run here, one after another, then the `report`.

  Returns False when the sweep stopped early (SIGTERM), True when every run finished. A TERM
  that arrives while a finished run is evaluated stops the sweep before the next run.
  """
  preemption.watch_sigterm()
  for i, (name, *_) in enumerate(runs):
    if preemption.stop_requested():
      print(
        f"[{i + 1}/{len(runs)}] {name}: stopped by SIGTERM before this run; "
        "run the sweep again to resume"
      )
      return False
    if not run_one(runs, i, workdir, evaluate=evaluate):
      return False
  report(runs, workdir, evaluate=evaluate)
  return True


# launch/slurm.sbatch, beside the package in the checkout: each array task runs through it.
SBATCH_SCRIPT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "launch",
  "slurm.sbatch",
)


def slurm_command(config, workdir, runs, *, evaluate=True, sbatch_args=()):
  """(argv, log pattern) of the sbatch that submits `runs` as one job array: task i runs
  `run_one` on run i (`python -m nopejax.sweep --launcher=slurm_task`), logging to the
  pattern with %A the job id and %a the task."""
  path, colon, arg = config.partition(":")
  config = os.path.abspath(path) + colon + arg  # the tasks run in the checkout, not here
  workdir = os.fspath(storage.path(workdir))
  log_dir = os.getcwd() if storage.is_remote(workdir) else workdir  # sbatch writes local files
  logs = os.path.join(log_dir, "slurm-%A_%a.out")
  argv = [
    "sbatch",
    "--parsable",
    "--wait",
    f"--array=0-{len(runs) - 1}",
    f"--output={logs}",
    *sbatch_args,
    SBATCH_SCRIPT,
    "--module",
    "nopejax.sweep",
    f"--config={config}",
    f"--workdir={workdir}",
    "--launcher=slurm_task",
    "--evaluate" if evaluate else "--noevaluate",
  ]
  return argv, logs


def run_slurm(config, runs, workdir, *, evaluate=True, sbatch_args=()):
  """Submits the runs as one SLURM job array (`slurm_command`), waits for it, then writes the
  `report` of them all; raises RunError naming each run that did not finish and its log."""
  if not os.path.exists(SBATCH_SCRIPT):
    raise ValueError(f"--launcher=slurm: no {SBATCH_SCRIPT} (it needs a checkout of nopejax)")
  argv, logs = slurm_command(config, workdir, runs, evaluate=evaluate, sbatch_args=sbatch_args)
  if not storage.is_remote(workdir):
    os.makedirs(storage.path(workdir), exist_ok=True)  # sbatch opens the logs, not mkdir
  try:
    # The checkout is the submit directory, where slurm.sbatch finds the code; PYTHON is
    # this interpreter, so the tasks run in this environment.
    proc = subprocess.Popen(
      argv,
      cwd=os.path.dirname(os.path.dirname(SBATCH_SCRIPT)),
      env=dict(os.environ, PYTHON=sys.executable),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
  except FileNotFoundError:
    raise ValueError("--launcher=slurm: no sbatch on this machine's PATH") from None
  job = proc.stdout.readline().split(";")[0].strip()  # --parsable: the id, then --wait
  if job.isdigit():
    print(f"job array {job}: {len(runs)} runs; waiting (logs: {logs})", flush=True)
  error = proc.stderr.read()
  proc.wait()
  if not job.isdigit():
    raise RunError(f"sbatch failed (status {proc.returncode}): {cli.one_line(error)}")
  logs = logs.replace("%A", job)
  unfinished = [
    f"run {name} did not finish; see {logs.replace('%a', str(i))}"
    for i, (name, _, cfg, _) in enumerate(runs)
    if not finished(cfg, os.fspath(storage.path(workdir) / name))
  ]
  if unfinished:
    raise RunError(f"job array {job}: " + "; ".join(unfinished))
  if proc.returncode != 0:  # every run finished, but a task failed after (its evaluation)
    raise RunError(f"job array {job} failed (sbatch status {proc.returncode}); see {logs}")
  report(runs, workdir, evaluate=evaluate)


def run_slurm_task(runs, workdir, *, evaluate=True):
  """What one task of `run_slurm`'s job array runs: `run_one` on run $SLURM_ARRAY_TASK_ID.
  A SIGTERM (preemption, requeue) saves the run, which the requeued task resumes."""
  index = os.environ.get("SLURM_ARRAY_TASK_ID", "")
  if not index.isdigit() or int(index) >= len(runs):
    raise ValueError(
      f"--launcher=slurm_task: SLURM_ARRAY_TASK_ID={index!r} names none of the {len(runs)} "
      "runs (this launcher is what each task of --launcher=slurm's job array runs)"
    )
  preemption.watch_sigterm()
  run_one(runs, int(index), workdir, evaluate=evaluate)


class RunError(Exception):
  """A run of the sweep failed; the message names it."""
