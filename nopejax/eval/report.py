"""The sweep report behind `python -m nopejax.report`.

Summarizes scheme x task x seed sweeps (configs/lengthgen.py) from each run's evaluation
(DIR/<run>/eval/results.json, written by `python -m nopejax.sweep`), as Kazemnejad et al. 2023
do: for every task and seed the schemes are ranked by accuracy beyond the training length, and
each scheme's mean reciprocal rank (MRR) is reported, by exact match (the paper's metric) and by
per-token accuracy (which still separates schemes when exact match beyond the training length is
0 for all of them). Ties share the best rank of the tie.

The paper's five schemes are ranked among themselves, so their MRR sits beside the paper's; when
the sweeps hold other schemes (the per-layer hybrids), all schemes are also ranked together. Only
(task, seed) groups holding every ranked scheme count, so a sweep stopped part-way reports the
groups it finished. A third table ranks by exact match over only the groups where some scheme
scores above 0 beyond the training length (where all tie at 0, the ranks say nothing). Runs
below FIT exact match within the training lengths are listed: their
scores beyond it say more about fitting than about generalizing.
"""

import collections
import json
import os

import numpy as np

from nopejax import experiment, storage
from nopejax.eval import common, runner
from nopejax.eval import tasks as task_eval
from nopejax.train import workdir as workdir_lib

METRICS = ("exact_match", "token_accuracy")
# The paper's no-scratchpad MRR (its Figure 3), for the table.
PAPER_MRR = {"nope": 0.69, "t5": 0.55, "alibi": 0.50, "rope": 0.33, "abs": 0.22}
FIT = 0.95  # the bar: mean exact match over the training lengths


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


def scores(runs, train_lengths):
  """{run name: beyond_training metrics} of every run."""
  out = {}
  for name, results in runs.items():
    task = parse_run(name)["task"]
    out[name] = beyond_training(results, task, train_lengths[task])
  return out


def _groups(scored):
  """{(task, seed): {scheme: metrics}} from {run name: metrics}."""
  groups = collections.defaultdict(dict)
  for name, metrics in scored.items():
    run = parse_run(name)
    groups[run["task"], run.get("seed", "0")][run["scheme"]] = metrics
  return groups


def mean_reciprocal_ranks(groups, schemes):
  """({scheme: {metric: MRR}}, groups counted): `schemes` ranked among themselves in every
  (task, seed) group that holds all of them."""
  complete = [g for g in groups.values() if all(s in g for s in schemes)]
  mrr = collections.defaultdict(dict)
  for metric in METRICS:
    reciprocal = collections.defaultdict(list)
    for group in complete:
      for scheme, rank in ranks({s: group[s][metric] for s in schemes}).items():
        reciprocal[scheme].append(1.0 / rank)
    for scheme, values in reciprocal.items():
      mrr[scheme][metric] = float(np.mean(values))
  return dict(mrr), len(complete)


def informative(groups, schemes):
  """The (task, seed) groups where some of `schemes` has exact match above 0 beyond the training
  length. In the others every scheme ties at 0 and shares rank 1, which says nothing about
  them but lifts the MRR of the weak ones."""
  return {
    key: group
    for key, group in groups.items()
    if any(group[s]["exact_match"] > 0 for s in schemes if s in group)
  }


def summarize(runs, train_lengths, schemes=None):
  """(per-scheme-and-task means and seed spread, per-scheme MRR per metric) from
  {run name: results}; MRR ranks `schemes` (default: all of them) among themselves."""
  groups = _groups(scores(runs, train_lengths))
  means = cell_means(groups)
  return means, mean_reciprocal_ranks(groups, schemes or sorted({s for s, _ in means}))[0]


def cell_means(groups):
  """{(scheme, task): metrics averaged over seeds, their spread (sd_...) and seed count}."""
  cells = collections.defaultdict(list)  # (scheme, task) -> [metrics per seed]
  for (task, _), group in groups.items():
    for scheme, metrics in group.items():
      cells[scheme, task].append(metrics)
  means = {}
  for key, ms in cells.items():
    means[key] = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
    means[key].update({"sd_" + k: float(np.std([m[k] for m in ms])) for k in METRICS})
    means[key]["seeds"] = len(ms)
  return means


def _mrr_table(title, mrr, count, paper):
  order = sorted(mrr, key=lambda s: -mrr[s]["token_accuracy"])
  lines = [
    title.format(count=count),
    "",
    "| scheme | MRR (exact match) | MRR (per-token) |" + (" paper MRR |" if paper else ""),
    "|---|---|---|" + ("---|" if paper else ""),
  ]
  for s in order:
    row = f"| {s} | {mrr[s]['exact_match']:.2f} | {mrr[s]['token_accuracy']:.2f} |"
    if paper:
      row += f" {PAPER_MRR[s]:.2f} |" if s in PAPER_MRR else " |"
    lines.append(row)
  return lines


def markdown(means, mrr, mrr_all=None, counts=(None, None), unfit=(), informative_mrr=None):
  """The report: MRR of the paper's schemes (and of all schemes), then per-task accuracies.
  `informative_mrr`: (MRR, groups counted) by exact match over the `informative` groups only."""
  order = mrr_all or mrr
  schemes = sorted({s for s, _ in means}, key=lambda s: -order.get(s, {}).get("token_accuracy", 0))
  tasks = sorted({t for _, t in means})
  lines = (
    _mrr_table(
      "The paper's five schemes ranked among themselves ({count} task x seed groups):",
      mrr,
      counts[0],
      paper=True,
    )
    if mrr
    else []
  )
  if mrr_all:
    lines += [""] + _mrr_table(
      "All schemes ranked together ({count} task x seed groups):", mrr_all, counts[1], paper=False
    )
  if informative_mrr and not informative_mrr[1]:
    lines += [
      "",
      "No task x seed group has a scheme above 0 exact match beyond the training length.",
    ]
  elif informative_mrr:
    scored, count = informative_mrr
    lines += [
      "",
      f"Exact match over the {count} task x seed groups where some scheme scores above 0 "
      "beyond the training length (in the others all tie at 0):",
      "",
      "| scheme | MRR (exact match) |",
      "|---|---|",
    ]
    lines += [
      f"| {s} | {scored[s]['exact_match']:.2f} |"
      for s in sorted(scored, key=lambda s: -scored[s]["exact_match"])
    ]
  for metric in METRICS:
    lines += [
      "",
      f"Beyond the training length, {metric.replace('_', ' ')}: mean ± sd over "
      "seeds (in brackets: within the training lengths)",
      "",
      "| scheme | " + " | ".join(tasks) + " |",
      "|---|" + "---|" * len(tasks),
    ]
    for s in schemes:
      row = [
        f"{means[s, t][metric]:.2f} ± {means[s, t]['sd_' + metric]:.2f} "
        f"({means[s, t]['iid_' + metric]:.2f})"
        if (s, t) in means
        else ""
        for t in tasks
      ]
      lines.append(f"| {s} | " + " | ".join(row) + " |")
  seeds = sorted({m["seeds"] for m in means.values()})
  lines += ["", f"Seeds per cell: {', '.join(map(str, seeds))}."]
  if unfit:
    lines += [
      "",
      f"Below {FIT:.0%} exact match within the training lengths: "
      + ", ".join(f"{n} ({v:.2f})" for n, v in unfit)
      + ".",
    ]
  return "\n".join(lines).lstrip("\n")


def seed_means(runs):
  """{run: results} -> {scheme: {task: {length: {metric: mean over seeds}}}}."""
  values = collections.defaultdict(list)  # (scheme, task, length, metric) -> [per seed]
  for name, results in runs.items():
    run = parse_run(name)
    for length, metrics in results.get(run["task"], {}).items():
      for metric in METRICS:
        values[run["scheme"], run["task"], length, metric].append(metrics[metric])
  out = collections.defaultdict(
    lambda: collections.defaultdict(lambda: collections.defaultdict(dict))
  )
  for (scheme, task, length, metric), v in values.items():
    out[scheme][task][length][metric] = float(np.mean(v))
  return out


def plot(runs, train_lengths, path):
  """Accuracy against length, one line per scheme (mean over seeds), one row per task."""
  plt = common.pyplot()
  by_scheme = seed_means(runs)
  tasks = sorted(train_lengths)
  order = [s for s in PAPER_MRR if s in by_scheme] + sorted(set(by_scheme) - set(PAPER_MRR))
  fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3 * len(tasks)), squeeze=False)
  for row, task in enumerate(tasks):
    for col, metric in enumerate(METRICS):
      ax = axes[row][col]
      for i, scheme in enumerate(order):  # one color per scheme in every panel
        points = sorted((int(n), m[metric]) for n, m in by_scheme[scheme].get(task, {}).items())
        if points:
          ax.plot(
            *zip(*points),
            marker=".",
            label=scheme,
            color=f"C{i % 10}",
            linestyle="-" if scheme in PAPER_MRR else "--",
          )
      ax.axvline(train_lengths[task] + 0.5, color="gray", linestyle=":")
      ax.set(title=f"{task}: {metric.replace('_', ' ')}", xlabel="length", ylim=(-0.02, 1.02))
      ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=90)


def run_dirs(sweep_dirs):
  """[(run name, run dir)] of every evaluated scheme=... run in the sweep directories."""
  found = []
  for sweep_dir in sweep_dirs:
    directory = storage.path(sweep_dir)
    if not directory.is_dir():
      raise ValueError(f"no such directory {sweep_dir!r}")
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
      name = path.name
      if "scheme" in parse_run(name) and (path / "eval" / "results.json").exists():
        found.append((name, path))
  if not found:
    raise ValueError(
      "no evaluated runs (DIR/<scheme=...>/eval/results.json); run "
      "`python -m nopejax.sweep` on it first"
    )
  return found


def load_runs(sweep_dirs):
  """({run name: results}, {task: training length}, {run name: run dir}) from every evaluated
  run of the sweeps."""
  runs, train_lengths, paths = {}, {}, {}
  for name, path in run_dirs(sweep_dirs):
    if name in paths:
      raise ValueError(f"run {name} is in two sweeps: {paths[name]} and {path}")
    paths[name] = path
    runs[name] = storage.read_json(path / "eval" / "results.json")[name]
    task = parse_run(name)["task"]
    if task not in train_lengths:
      exp = experiment.resolve(workdir_lib.load_config(os.fspath(path)))
      train_lengths[task] = task_eval.train_length(exp.data, task)
  return runs, train_lengths, paths


def compute_seconds(run_dir):
  """(seconds of training steps, seconds of evaluation) a run took: steps from its logged
  mean step times (compilation and checkpoint saves excluded), evaluation as recorded."""
  train, last = 0.0, 0
  run_dir = storage.path(run_dir)
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "step_s" in record:
      train += record["step_s"] * (record["step"] - last)
      last = record["step"]
  try:
    evaluate = storage.read_json(run_dir / "eval" / runner.CACHE_KEY).get("seconds", 0.0)
  except OSError:
    evaluate = 0.0
  return train, evaluate


def report(runs, train_lengths, paths):
  """The markdown report of the runs `load_runs` read."""
  scored = scores(runs, train_lengths)
  groups = _groups(scored)
  present = sorted({s for g in groups.values() for s in g})
  paper = [s for s in PAPER_MRR if s in present]
  means = cell_means(groups)
  mrr, n_paper = mean_reciprocal_ranks(groups, paper) if len(paper) > 1 else ({}, 0)
  mrr_all, n_all = (
    mean_reciprocal_ranks(groups, present) if set(present) - set(paper) else (None, None)
  )
  ranked = present if mrr_all else paper
  informative_mrr = mean_reciprocal_ranks(informative(groups, ranked), ranked)
  unfit = [(name, m["iid_exact_match"]) for name, m in scored.items() if m["iid_exact_match"] < FIT]
  train, evaluate = np.sum([compute_seconds(path) for path in paths.values()], axis=0)
  return (
    markdown(means, mrr, mrr_all, (n_paper, n_all), unfit, informative_mrr)
    + f"\n\nCompute: {len(runs)} runs, {train / 3600:.2f} h of training steps and "
    f"{evaluate / 3600:.2f} h of evaluation."
  )


def write(sweep_dirs, out=None, plot_path=None):
  """The report of the sweeps (also written to `out`), with its plot at `plot_path`."""
  runs, train_lengths, paths = load_runs(sweep_dirs)
  text = report(runs, train_lengths, paths)
  if plot_path:
    plot(runs, train_lengths, plot_path)
  if out:
    storage.write_text(out, text + "\n")
  return text
