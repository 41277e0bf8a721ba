"""Sweeps behind `python -m nopejax.sweep`: the config file's `get_sweep(arg)` (a list of
{dotted key: value} overrides) expanded into runs, each in DIR/<its overrides>.

`run_local` trains them one after another in this process (finished runs are skipped,
unfinished ones resume) and evaluates each into DIR/<run>/eval as it finishes (reused while its
newest checkpoint and eval group are unchanged), then compares them all in one table and plot
in DIR/eval and writes a summary of final metrics to DIR/summary.md; `commands` gives one
train command per run instead.
"""

import importlib.util
import json
import os
import shlex

from nopejax import experiment, storage
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


def run_local(runs, workdir, *, evaluate=True):
  """Trains the runs one after another here (finished ones skipped, unfinished ones resumed),
  each evaluated as it finishes; then the summary and, with `evaluate`, the comparison.

  Returns False when the sweep stopped early (SIGTERM), True when every run finished.
  """
  preemption.watch_sigterm()
  for i, (name, _, cfg, _) in enumerate(runs):
    run_dir = os.fspath(storage.path(workdir) / name)
    if preemption.stop_requested():  # SIGTERM while the previous run was evaluated
      print(
        f"[{i + 1}/{len(runs)}] {name}: stopped by SIGTERM before this run; "
        "run the sweep again to resume"
      )
      return False
    if finished(cfg, run_dir):
      print(f"[{i + 1}/{len(runs)}] {name}: finished, skipping")
      if evaluate:  # a no-op when its evaluation is cached
        runner.evaluate_runs([run_dir], cache=True)
      continue
    print(f"[{i + 1}/{len(runs)}] {name}: training in {run_dir}")
    try:
      loop.run(experiment.resolve(cfg), run_dir)
    except (ValueError, RuntimeError) as e:
      raise RunError(f"error in run {name}: {e}") from None
    if not finished(cfg, run_dir):
      # The run saved and returned early: SIGTERM (preemption) stops the whole sweep, which
      # resumes this run and skips the finished ones when started again.
      print(f"[{i + 1}/{len(runs)}] {name}: preempted; run the sweep again to resume")
      return False
    if evaluate:  # now, so a sweep stopped part-way has its finished runs evaluated
      runner.evaluate_runs([run_dir], cache=True)
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
  return True


class RunError(Exception):
  """A run of the sweep failed; the message names it."""
