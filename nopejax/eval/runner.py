"""Running the kinds of `eval.kinds` on trained runs, caching results, writing the outputs.

results.json: {run: {task: {length: metrics}, 'lm': {length: metrics},
'passkey': {length: {depth: accuracy}}}} (tasks at the top level, beside lm and passkey).
"""

import dataclasses
import json
import time

from nopejax import experiment, storage
from nopejax.eval.kinds import KINDS
from nopejax.train import workdir as workdir_lib

# Beside a run's eval/results.json: the step and eval group they are for, and the seconds taken.
CACHE_KEY = "evaluated.json"


def model_spec(exp):
  """The run's ModelSpec with evaluation-only settings: eval.rope_scaling and its factor in place
  of the model's own scaling (eval.rope_scaling=none keeps it). The extension is measured from
  model.rope_original_len when the model sets one, else from the training length data.seq_len;
  the type's other options (llama3's, YaRN's) are the model keys'."""
  e = exp.eval
  if e.rope_scaling == "none":
    return exp.model
  return dataclasses.replace(
    exp.model,
    rope_scaling=e.rope_scaling,
    rope_scaling_factor=float(e.rope_scaling_factor),
    rope_original_len=exp.model.rope_original_len or exp.data.seq_len,
  )


def evaluate(exp, params, spec=None):
  """Every kind of eval.kinds for one run: {task: ..., 'lm': ..., 'passkey': ...}."""
  spec = spec or model_spec(exp)
  results = {}
  for name in exp.eval.kind_names:
    kind = KINDS[name]
    if name == "tasks" and exp.data.kind != "tasks":
      raise ValueError(f"eval.kinds: tasks needs data.kind=tasks, got {exp.data.kind!r}")
    out = kind.evaluate(exp, spec, params)
    if kind.merged:
      results.update(out)
    else:
      results[name] = out
  return results


def run_experiment(workdir, config=None, eval_group=None):
  """The Experiment a run is evaluated under: its own config.json unless `config` is given,
  with `eval_group` (an `eval` ConfigDict group) in place of its own when given."""
  cfg = config if config is not None else workdir_lib.load_config(workdir)
  if eval_group is not None:
    cfg = cfg.copy_and_resolve_references()
    cfg.eval = eval_group
  return experiment.resolve(cfg)


def evaluate_runs(workdirs, config=None, eval_overrides=None, cache=False):
  """({run name: results}, Experiment of the first run) for each workdir.

  Each run uses its own config.json unless `config` is given; `eval_overrides` (an `eval`
  group) replaces every run's, so runs are compared under the same evaluation settings.
  With `cache`, each run's results are also written to WORKDIR/eval/ and reused while its
  newest checkpoint step and eval group are those they were computed for.
  """
  runs, first = {}, None
  for workdir in workdirs:
    exp = run_experiment(workdir, config, eval_overrides)
    name = storage.path(workdir).name
    key = {"step": _newest_step(workdir), "eval": dataclasses.asdict(exp.eval)}
    results = _cached(workdir, name, key) if cache else None
    if results is None:
      start = time.perf_counter()
      results = evaluate(exp, workdir_lib.latest_params(exp, workdir))
      if cache:
        out = storage.path(workdir) / "eval"
        write_outputs({name: results}, exp, out)
        storage.write_json(out / CACHE_KEY, dict(key, seconds=time.perf_counter() - start))
    runs[name] = results
    first = first or exp
  return runs, first


def _newest_step(workdir):
  path = storage.path(workdir) / "checkpoints"
  steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []
  return max(steps, default=None)


def _cached(workdir, name, key):
  """The run's results from WORKDIR/eval when computed for `key`, else None."""
  out = storage.path(workdir) / "eval"
  try:
    stored = storage.read_json(out / CACHE_KEY)
    if {k: stored.get(k) for k in key} != json.loads(json.dumps(key)):
      return None
    return storage.read_json(out / "results.json")[name]
  except (OSError, ValueError, KeyError):
    return None


def write_outputs(runs, exp, out_dir):
  """results.json, tables.md and a PNG per kind present (accuracy, lm, passkey) in out_dir;
  returns the tables' text."""
  out_dir = storage.path(out_dir)  # storage's writes create it
  storage.write_json(out_dir / "results.json", runs, indent=2)
  parts = []
  for kind in KINDS.values():
    if kind.results_in(runs):
      parts.append(kind.table(runs, exp))
      kind.plot(runs, exp, out_dir / kind.plot_file)
  text = "\n".join(parts)
  storage.write_text(out_dir / "tables.md", text)
  return text


def outputs(out_dir):
  """The files write_outputs left in out_dir, for the command's last line."""
  names = (p.name for p in storage.path(out_dir).iterdir())
  return sorted(f for f in names if f.endswith((".json", ".md", ".png")))
