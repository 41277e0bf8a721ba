"""Length-generalization metrics, tables and plots.

Task accuracy is scored by teacher forcing: the model reads prompt + answer once and its argmax
is compared with every answer token. Exact match under teacher forcing equals exact match of
greedy decoding (greedy decoding produces the answer iff every step's argmax is the next answer
token), and the same pass gives per-token accuracy, which still separates schemes where exact
match beyond the training length is 0 for all of them.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from nopejax import data as data_lib
from nopejax import datasets
from nopejax import experiment
from nopejax import model_api
from nopejax import tokenizers
from nopejax import training


def _pad_batch(examples, pad_id, multiple=16):
  """Rows of prompt + answer, right-padded to a multiple of `multiple` to limit recompiles."""
  docs = [e["prompt"] + e["answer"] for e in examples]
  width = -(-max(len(d) - 1 for d in docs) // multiple) * multiple
  inputs = np.full((len(docs), width), pad_id, np.int32)
  targets = np.full((len(docs), width), pad_id, np.int32)
  answer_mask = np.zeros((len(docs), width), np.float32)
  for i, (doc, e) in enumerate(zip(docs, examples)):
    inputs[i, : len(doc) - 1] = doc[:-1]
    targets[i, : len(doc) - 1] = doc[1:]
    answer_mask[i, len(e["prompt"]) - 1: len(doc) - 1] = 1.0
  return inputs, targets, answer_mask


def make_scorer(spec):
  @jax.jit
  def score(params, inputs, targets, answer_mask):
    logits = model_api.forward(spec, params, inputs)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * answer_mask
    return correct.sum(-1), answer_mask.sum(-1)
  return score


def task_accuracy(score, params, examples, *, pad_id, batch_size):
  """Exact-match and per-token accuracy of the answers of `examples`."""
  correct, total = [], []
  for i in range(0, len(examples), batch_size):
    chunk = examples[i: i + batch_size]
    inputs, targets, mask = _pad_batch(chunk, pad_id)
    # Pad the batch too, so every chunk of a length compiles once.
    rows = batch_size if len(examples) > batch_size else len(chunk)
    pad = rows - len(chunk)
    c, t = score(params, *(np.pad(x, ((0, pad), (0, 0))) for x in (inputs, targets, mask)))
    correct.append(np.asarray(c)[: len(chunk)])
    total.append(np.asarray(t)[: len(chunk)])
  correct, total = np.concatenate(correct), np.concatenate(total)
  return {"exact_match": float(np.mean(correct == total)),
          "token_accuracy": float(correct.sum() / max(total.sum(), 1))}


def evaluate_tasks(cfg, spec, params):
  """{task: {length: metrics}} over every test length of every task in the config."""
  score = make_scorer(spec)
  tokenizer_pad = tokenizers.get_tokenizer(cfg.data).pad_id
  limit = cfg.eval.max_examples or None
  results = {}
  for task in data_lib.task_names(cfg.data):
    results[task] = {}
    for length in data_lib.test_lengths(cfg.data, task):
      examples = data_lib.task_examples(cfg.data, task, f"test_{length}")[:limit]
      results[task][length] = task_accuracy(score, params, examples, pad_id=tokenizer_pad,
                                            batch_size=cfg.eval.batch_size)
  return results


def train_length(cfg, task):
  return datasets.task_lengths(cfg.data, task)[0]


def markdown_table(runs, metric, cfg):
  """One row per (run, task), one column per test length; `*` marks lengths beyond training."""
  lines = []
  for task in sorted({t for r in runs.values() for t in r}):
    lengths = sorted({int(n) for r in runs.values() for n in r.get(task, {})})
    limit = train_length(cfg, task)
    head = [f"{n}{'*' if n > limit else ''}" for n in lengths]
    lines.append(f"**{task}** ({metric}; * = beyond training length {limit})\n")
    lines.append("| run | " + " | ".join(head) + " |")
    lines.append("|---|" + "---|" * len(lengths))
    for name, results in runs.items():
      row = results.get(task, {})
      cells = [f"{row[n][metric]:.2f}" if n in row else "" for n in lengths]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def plot(runs, cfg, path):
  """Accuracy against length, one panel per (task, metric), the training length marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks = sorted({t for r in runs.values() for t in r})
  metrics = ("exact_match", "token_accuracy")
  fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.2 * len(tasks)), squeeze=False)
  for row, task in enumerate(tasks):
    for col, metric in enumerate(metrics):
      ax = axes[row][col]
      for name, results in runs.items():
        points = sorted((int(n), m[metric]) for n, m in results.get(task, {}).items())
        if points:
          ax.plot(*zip(*points), marker="o", label=name)
      ax.axvline(train_length(cfg, task) + 0.5, color="gray", linestyle="--",
                 label="training length")
      ax.set(title=f"{task}: {metric.replace('_', ' ')}", xlabel="length", ylim=(-0.02, 1.02))
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_outputs(runs, cfg, out_dir):
  """results.json, tables.md and accuracy.png in out_dir; returns the table text."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(runs, f, indent=2)
  text = "\n".join(markdown_table(runs, m, cfg) for m in ("exact_match", "token_accuracy"))
  with open(os.path.join(out_dir, "tables.md"), "w") as f:
    f.write(text)
  plot(runs, cfg, os.path.join(out_dir, "accuracy.png"))
  return text


def evaluate_runs(workdirs, config=None):
  """{run name: results} for each workdir, each with its own config unless one is given."""
  runs, cfg = {}, config
  for workdir in workdirs:
    run_cfg = config if config is not None else training.load_config(workdir)
    experiment.validate(run_cfg)
    params = training.latest_params(run_cfg, workdir)
    runs[os.path.basename(os.path.normpath(workdir))] = evaluate_tasks(
        run_cfg, experiment.validate(run_cfg), params)
    cfg = cfg or run_cfg
  return runs, cfg
