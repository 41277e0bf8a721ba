"""Language-model loss by context length on held-out text.

Held-out documents (`data.text_documents(..., 'validation')`) are read in windows of each
context length L that all end at the same anchors, and only each window's last
`score_tokens = data.seq_len // 2` targets are scored, so every length scores the same tokens
and differs only in how much context precedes them. Long windows go through the blockwise
attention path (`model.attention_impl=auto`, above `model.blockwise_above`), in batches of at
most `eval.batch_size * data.seq_len` tokens, so memory stays bounded.

Results: {'lm': {length: {loss, perplexity, bits_per_byte, tokens, windows}}}.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from nopejax.data import examples as data_examples
from nopejax.data import tokenizers
from nopejax.eval import common
from nopejax.model import api as model_api


def lm_windows(documents, length, longest, score_tokens, limit=None):
  """(inputs, targets) int32 [W, length] of windows ending at shared anchors.

  Anchors e are every `score_tokens`-th token from `longest` on in each document long enough
  for the longest length, so each length's windows score the same targets doc[e-score+1:e+1].
  """
  inputs, targets = [], []
  for doc in documents:
    for end in range(longest, len(doc), score_tokens):
      if limit is not None and len(inputs) >= limit:
        break
      inputs.append(doc[end - length : end])
      targets.append(doc[end - length + 1 : end + 1])
  if not inputs:
    raise ValueError(
      f"eval.lm_lengths: no validation document has the {longest + 1} tokens "
      "the longest context needs; lower eval.lm_lengths or use a larger corpus"
    )
  return np.stack(inputs).astype(np.int32), np.stack(targets).astype(np.int32)


def make_lm_scorer(spec):
  @jax.jit
  def nll(params, inputs_BT, targets_BT, mask_BT):
    logits_BTV = model_api.forward(spec, params, inputs_BT)
    logp_BT = jnp.take_along_axis(jax.nn.log_softmax(logits_BTV, -1), targets_BT[..., None], -1)[
      ..., 0
    ]
    return -jnp.sum(logp_BT * mask_BT)

  return nll


def lm_loss(nll, params, inputs, targets, mask, rows):
  """Summed cross-entropy (nats) of the masked targets, `rows` windows at a time."""
  total = 0.0
  for i in range(0, len(inputs), rows):
    pad = ((0, max(0, i + rows - len(inputs))), (0, 0))
    total += float(
      nll(
        params,
        np.pad(inputs[i : i + rows], pad),
        np.pad(targets[i : i + rows], pad),
        np.pad(mask[i : i + rows], pad),
      )
    )
  return total


def _num_bytes(tok, targets, mask):
  scored = targets[mask > 0]
  if tok.name == "byte":
    return int(np.sum(scored >= tokenizers.NUM_SPECIAL))
  # Other tokenizers: the byte length of the decoded text (approximate at window edges).
  return sum(len(tok.decode(row[m > 0].tolist()).encode()) for row, m in zip(targets, mask))


def evaluate_lm(exp, spec, params):
  """{length: {loss, perplexity, bits_per_byte, tokens, windows}} on held-out text."""
  lengths = exp.eval.lm_lengths_for(exp.data.seq_len)
  spec.check_length(max(lengths), f"eval.lm_lengths={max(lengths)}", common.SHORTER)
  tok = tokenizers.get_tokenizer(exp.data)
  documents = data_examples.text_documents(exp.data, "validation")
  score_tokens = max(1, min(exp.data.seq_len // 2, min(lengths)))
  nll = make_lm_scorer(spec)
  budget = exp.eval.batch_size * exp.data.seq_len  # tokens per batch, the same at every length
  results = {}
  for length in lengths:
    inputs, targets = lm_windows(documents, length, max(lengths), score_tokens, exp.eval.limit)
    mask = np.zeros(inputs.shape, np.float32)
    mask[:, -score_tokens:] = 1.0
    rows = max(1, min(len(inputs), budget // length))
    ce = lm_loss(nll, params, inputs, targets, mask, rows)
    tokens = float(mask.sum())
    loss = ce / tokens
    results[length] = {
      "loss": loss,
      "perplexity": math.exp(min(loss, 700.0)),
      "bits_per_byte": ce / math.log(2) / max(_num_bytes(tok, targets, mask), 1),
      "tokens": tokens,
      "windows": len(inputs),
    }
  return results


def lm_table(runs, exp):
  """Bits per byte and perplexity by context length, one row per run."""
  rows = {name: {int(n): m for n, m in r["lm"].items()} for name, r in runs.items() if "lm" in r}
  if not rows:
    return ""
  lengths = sorted({n for r in rows.values() for n in r})
  seq_len = exp.data.seq_len
  head = " | ".join(f"{n}{'*' if n > seq_len else ''}" for n in lengths)
  lines = []
  for metric in ("bits_per_byte", "perplexity"):
    lines += [
      f"**lm** ({metric} of the last tokens of each window, by context length; "
      f"* = beyond training length {seq_len})\n",
      f"| run | {head} |",
      "|---|" + "---|" * len(lengths),
    ]
    for name, r in rows.items():
      lines.append(
        f"| {name} | " + " | ".join(f"{r[n][metric]:.3f}" if n in r else "" for n in lengths) + " |"
      )
    lines.append("")
  return "\n".join(lines)


def plot_lm(runs, exp, path):
  """Bits per byte and perplexity against context length (log scale), training length marked."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, metric in zip(axes, ("bits_per_byte", "perplexity")):
    common.plot_runs(ax, runs, "lm", metric)
    ax.axvline(exp.data.seq_len, color="gray", linestyle="--", label="training length")
    ax.set_xscale("log", base=2)
    ax.set(title=f"lm: {metric.replace('_', ' ')}", xlabel="context length (tokens)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=100)


KIND = common.Kind("lm", evaluate_lm, lm_table, plot_lm, "lm.png", reads_text=True)
