"""python -m nopejax.report --sweep=DIR [--out=FILE]

Summarizes a scheme x task x seed sweep (configs/lengthgen.py) from DIR/eval/results.json, as
Kazemnejad et al. 2023 do: for every task and seed the schemes are ranked by accuracy beyond the
training length, and each scheme's mean reciprocal rank (MRR) is reported, by exact match (the
paper's metric) and by per-token accuracy (which still separates schemes when exact match
beyond the training length is 0 for all of them). Ties share the best rank of the tie.
"""

import collections
import json
import os
import sys

import numpy as np
from absl import app, flags

from nopejax import evaluation, training

METRICS = ("exact_match", "token_accuracy")
# The paper's no-scratchpad MRR (its Figure 3), for the table.
PAPER_MRR = {"nope": 0.69, "t5": 0.55, "alibi": 0.50, "rope": 0.33, "abs": 0.22}


def parse_run(name):
  """'scheme=t5,task=copy,seed=1' -> {'scheme': 't5', 'task': 'copy', 'seed': '1'}."""
  return dict(item.split("=", 1) for item in name.split(",") if "=" in item)


def beyond_training(results, task, train_length):
  """Mean of each metric over the test lengths beyond the training length, and within it."""
  by_length = results.get(task, {})
  out = {}
  for metric in METRICS:
    ood = [m[metric] for n, m in by_length.items() if int(n) > train_length]
    iid = [m[metric] for n, m in by_length.items() if int(n) <= train_length]
    out[metric] = float(np.mean(ood)) if ood else float("nan")
    out["iid_" + metric] = float(np.mean(iid)) if iid else float("nan")
  return out


def ranks(scores):
  """{scheme: score} -> {scheme: rank}, 1 = best, ties share the best rank."""
  return {s: 1 + sum(other > v for other in scores.values()) for s, v in scores.items()}


def summarize(runs, train_lengths):
  """(per-scheme-and-task means, per-scheme MRR per metric) from {run name: results}."""
  cells = collections.defaultdict(list)  # (scheme, task) -> [metrics per seed]
  groups = collections.defaultdict(dict)  # (task, seed) -> {scheme: metrics}
  for name, results in runs.items():
    run = parse_run(name)
    metrics = beyond_training(results, run["task"], train_lengths[run["task"]])
    cells[run["scheme"], run["task"]].append(metrics)
    groups[run["task"], run.get("seed", "0")][run["scheme"]] = metrics
  means = {key: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
           for key, ms in cells.items()}
  mrr = collections.defaultdict(dict)
  for metric in METRICS:
    reciprocal = collections.defaultdict(list)
    for schemes in groups.values():
      for scheme, rank in ranks({s: m[metric] for s, m in schemes.items()}).items():
        reciprocal[scheme].append(1.0 / rank)
    for scheme, values in reciprocal.items():
      mrr[scheme][metric] = float(np.mean(values))
  return means, dict(mrr)


def markdown(means, mrr):
  schemes = sorted(mrr, key=lambda s: -mrr[s]["token_accuracy"])
  tasks = sorted({t for _, t in means})
  lines = ["| scheme | MRR (exact match) | MRR (per-token) | paper MRR |", "|---|---|---|---|"]
  for s in schemes:
    paper = PAPER_MRR.get(s)
    lines.append(f"| {s} | {mrr[s]['exact_match']:.2f} | {mrr[s]['token_accuracy']:.2f} | "
                 f"{'' if paper is None else f'{paper:.2f}'} |")
  for metric in METRICS:
    lines += ["", f"Beyond the training length, {metric.replace('_', ' ')} (mean over seeds; "
              f"in brackets: within the training lengths)", "",
              "| scheme | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for s in schemes:
      row = [f"{means[s, t][metric]:.2f} ({means[s, t]['iid_' + metric]:.2f})"
             if (s, t) in means else "" for t in tasks]
      lines.append(f"| {s} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def report(sweep_dir):
  """Reads DIR/eval/results.json and each run's config; returns the markdown report."""
  with open(os.path.join(sweep_dir, "eval", "results.json")) as f:
    runs = json.load(f)
  train_lengths = {}
  for name in runs:
    task = parse_run(name)["task"]
    if task not in train_lengths:
      cfg = training.load_config(os.path.join(sweep_dir, name))
      train_lengths[task] = evaluation.train_length(cfg, task)
  return markdown(*summarize(runs, train_lengths))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    text = report(flags.FLAGS.sweep)
  except (OSError, KeyError, ValueError) as e:
    sys.exit(f"error: --sweep={flags.FLAGS.sweep}: {e}")
  print(text)
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  flags.DEFINE_string("sweep", None, "A sweep directory evaluated by `python -m nopejax.sweep`.")
  flags.DEFINE_string("out", None, "Also write the markdown here.")
  flags.mark_flags_as_required(["sweep"])
  app.run(main)
