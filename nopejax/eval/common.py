"""What the evaluation kinds share: the Kind record, batching, generated exact match, plots."""

import dataclasses
import io
from collections.abc import Callable

import numpy as np

from nopejax import storage
from nopejax.model import generate


@dataclasses.dataclass(frozen=True)
class Kind:
  """One evaluation kind (`eval.kinds`), registered in kinds.py."""

  name: str
  evaluate: Callable  # (exp, model spec, params) -> results
  table: Callable  # (runs, exp) -> markdown
  plot: Callable  # (runs, exp, path)
  plot_file: str  # the PNG plot writes in the eval directory
  reads_text: bool = False  # needs a tokenizer that encodes text, not task words
  merged: bool = False  # results go at the top level of a run's (tasks: keyed by task name)
  present: Callable | None = None  # (runs) -> bool; default: some run has results[name]

  def results_in(self, runs):
    if self.present is not None:
      return self.present(runs)
    return any(self.name in r for r in runs.values())


# What a length refused by learned input positions (ModelSpec.check_length) should do instead.
SHORTER = "; evaluate shorter lengths"


def chunks(examples, batch_size):
  """Batches of `batch_size`, the last padded with copies of the first example so every batch of
  a length has one shape (one compile); returns (batch, number of real examples)."""
  for i in range(0, len(examples), batch_size):
    chunk = examples[i : i + batch_size]
    rows = batch_size if len(examples) > batch_size else len(chunk)
    yield chunk + [chunk[0]] * (rows - len(chunk)), len(chunk)


def generated_exact_match(spec, params, examples, *, pad_id, batch_size):
  """Per example: does greedy decoding with the cache reproduce the answer (and its eos)?"""
  matches = []
  longest = max(len(e["answer"]) for e in examples)
  max_new = -(-longest // 8) * 8  # a multiple of 8, so neighbouring lengths share a program
  for chunk, real in chunks(examples, batch_size):
    out = generate.generate(spec, params, [e["prompt"] for e in chunk], max_new, pad_id=pad_id)
    matches += [list(row[: len(e["answer"])]) == e["answer"] for row, e in zip(out, chunk)][:real]
  return np.asarray(matches)


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save_figure(fig, path, dpi):
  """Writes `fig` as a PNG to `path` (local or a bucket URL, in one piece) and closes it."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  pyplot().close(fig)
  storage.write_bytes(path, buf.getvalue())


def plot_runs(ax, runs, section, metric):
  """One line per run: `metric` against the lengths of results[run][section]."""
  for name, results in runs.items():
    points = sorted((int(n), m[metric]) for n, m in results.get(section, {}).items())
    if points:
      ax.plot(*zip(*points), marker="o", label=name)


def key(mapping, n):
  """`n` as the mapping spells it: int keys in memory, strings once read back from JSON."""
  return n if n in mapping else str(n)
