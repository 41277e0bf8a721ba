"""Task accuracy by length: exact match by greedy generation with the KV cache (generate.py)
from the prompt, compared with the answer and its eos, and per-token accuracy from one
teacher-forced pass (the model reads prompt + answer once).

Per-token accuracy still separates schemes where exact match beyond the training length is 0 for
all of them. The teacher-forced pass also gives its own exact match, which must equal
generation's (greedy decoding produces the answer iff every step's argmax is the next answer
token); both are kept so the equality is checked on every run.

Results: {task: {length: {exact_match, token_accuracy, exact_match_teacher_forced}}}, at the top
level of a run's results.
"""

import jax
import jax.numpy as jnp
import numpy as np

from nopejax.data import examples as data_examples
from nopejax.data import tokenizers
from nopejax.data.sources import tasks as task_source
from nopejax.eval import common
from nopejax.model import api as model_api


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
    answer_mask[i, len(e["prompt"]) - 1 : len(doc) - 1] = 1.0
  return inputs, targets, answer_mask


def make_scorer(spec):
  @jax.jit
  def score(params, inputs, targets, answer_mask):
    logits = model_api.forward(spec, params, inputs)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * answer_mask
    return correct.sum(-1), answer_mask.sum(-1)

  return score


def task_accuracy(score, params, examples, *, pad_id, batch_size, spec=None):
  """Exact match (generated when `spec` is given) and teacher-forced accuracy of `examples`."""
  correct, total = [], []
  for chunk, real in common.chunks(examples, batch_size):
    c, t = score(params, *_pad_batch(chunk, pad_id))
    correct.append(np.asarray(c)[:real])
    total.append(np.asarray(t)[:real])
  correct, total = np.concatenate(correct), np.concatenate(total)
  forced = correct == total
  result = {
    "exact_match": float(np.mean(forced)),
    "token_accuracy": float(correct.sum() / max(total.sum(), 1)),
    "exact_match_teacher_forced": float(np.mean(forced)),
  }
  if spec is not None:
    result["exact_match"] = float(
      np.mean(
        common.generated_exact_match(spec, params, examples, pad_id=pad_id, batch_size=batch_size)
      )
    )
  return result


def evaluate_tasks(exp, spec, params):
  """{task: {length: metrics}} over every test length of every task in the config."""
  score = make_scorer(spec)
  pad_id = tokenizers.get_tokenizer(exp.data).pad_id
  results = {}
  for task in exp.data.task_names:
    results[task] = {}
    for length in data_examples.test_lengths(exp.data, task):
      examples = data_examples.task_examples(exp.data, task, f"test_{length}")[: exp.eval.limit]
      longest = max(len(e["prompt"]) + len(e["answer"]) for e in examples)
      spec.check_length(longest, f"task {task} at length {length}", common.SHORTER)
      results[task][length] = task_accuracy(
        score, params, examples, pad_id=pad_id, batch_size=exp.eval.batch_size, spec=spec
      )
  return results


def train_length(data_spec, task):
  return task_source.task_lengths(data_spec, task)[0]


def tasks_of(runs):
  """The task names among the runs' results: every key no other kind owns."""
  from nopejax.eval.kinds import KINDS  # the registry imports this module

  sections = {k.name for k in KINDS.values() if not k.merged}
  return sorted({t for r in runs.values() for t in r if t not in sections})


def markdown_table(runs, metric, exp):
  """One row per (run, task), one column per test length; `*` marks lengths beyond training."""
  lines = []
  for task in tasks_of(runs):
    lengths = sorted({int(n) for r in runs.values() for n in r.get(task, {})})
    limit = train_length(exp.data, task)
    head = [f"{n}{'*' if n > limit else ''}" for n in lengths]
    lines.append(f"**{task}** ({metric}; * = beyond training length {limit})\n")
    lines.append("| run | " + " | ".join(head) + " |")
    lines.append("|---|" + "---|" * len(lengths))
    for name, results in runs.items():
      row = {int(n): m for n, m in results.get(task, {}).items()}
      cells = [f"{row[n][metric]:.2f}" if n in row else "" for n in lengths]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def table(runs, exp):
  return "\n".join(markdown_table(runs, m, exp) for m in ("exact_match", "token_accuracy"))


def plot(runs, exp, path):
  """Accuracy against length, one panel per (task, metric), the training length marked."""
  plt = common.pyplot()
  tasks = tasks_of(runs)
  metrics = ("exact_match", "token_accuracy")
  fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.2 * len(tasks)), squeeze=False)
  for row, task in enumerate(tasks):
    for col, metric in enumerate(metrics):
      ax = axes[row][col]
      common.plot_runs(ax, runs, task, metric)
      ax.axvline(
        train_length(exp.data, task) + 0.5, color="gray", linestyle="--", label="training length"
      )
      ax.set(title=f"{task}: {metric.replace('_', ' ')}", xlabel="length", ylim=(-0.02, 1.02))
      ax.legend(fontsize=7)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=100)


KIND = common.Kind(
  "tasks",
  evaluate_tasks,
  table,
  plot,
  "accuracy.png",
  merged=True,
  present=lambda runs: bool(tasks_of(runs)),
)
