"""Passkey retrieval by length and needle depth: greedy generation after each prompt of
`data.passkey_examples(length, depth)`, which must give the key exactly.

Results: {'passkey': {length: {depth: accuracy}}}.
"""

import dataclasses

import numpy as np

from nopejax.data import examples as data_examples
from nopejax.data import tokenizers
from nopejax.eval import common


def _passkey_data(data_spec):
  """The data spec passkey examples are read with: a text run's own would also generate
  data.num_train training documents of a dataset it never trains on."""
  if data_spec.kind == "passkey":
    return data_spec
  return dataclasses.replace(data_spec, num_train=1, num_test=1)


def evaluate_passkey(exp, spec, params):
  """{length: {depth: accuracy}}: the generated key must equal the answer exactly."""
  data_cfg = _passkey_data(exp.data)
  tok = tokenizers.get_tokenizer(data_cfg)
  budget = exp.eval.batch_size * exp.data.seq_len
  results = {}
  for length in data_cfg.passkey_lengths:
    spec.check_length(length, f"data.passkey_lengths={length}", common.SHORTER)
    results[length] = {}
    for depth in data_cfg.passkey_depths:
      examples = data_examples.passkey_examples(data_cfg, length, depth)[: exp.eval.limit]
      rows = max(1, min(exp.eval.batch_size, budget // length))
      matches = common.generated_exact_match(
        spec, params, examples, pad_id=tok.pad_id, batch_size=rows
      )
      results[length][depth] = float(np.mean(matches))
  return results


def passkey_table(runs, exp):
  """Passkey accuracy: one row per (run, depth), one column per length."""
  rows = {name: r["passkey"] for name, r in runs.items() if "passkey" in r}
  if not rows:
    return ""
  lengths = sorted({int(n) for r in rows.values() for n in r})
  seq_len = exp.data.seq_len
  lines = [
    f"**passkey** (accuracy by length and needle depth; * = beyond training length {seq_len})\n",
    "| run | depth | " + " | ".join(f"{n}{'*' if n > seq_len else ''}" for n in lengths) + " |",
    "|---|---|" + "---|" * len(lengths),
  ]
  for name, r in rows.items():
    by_length = {int(n): {float(d): a for d, a in v.items()} for n, v in r.items()}
    for depth in sorted({d for v in by_length.values() for d in v}):
      cells = [
        f"{by_length[n][depth]:.2f}" if depth in by_length.get(n, {}) else "" for n in lengths
      ]
      lines.append(f"| {name} | {depth:g} | " + " | ".join(cells) + " |")
  lines.append("")
  return "\n".join(lines)


def plot_passkey(runs, exp, path):
  """One heatmap per run (depth x length) and accuracy by length averaged over depths."""
  plt = common.pyplot()
  named = [(name, r["passkey"]) for name, r in runs.items() if "passkey" in r]
  fig, axes = plt.subplots(1, len(named) + 1, figsize=(4.2 * (len(named) + 1), 3.6), squeeze=False)
  seq_len = exp.data.seq_len
  for ax, (name, result) in zip(axes[0], named):
    lengths = sorted(int(n) for n in result)
    depths = sorted({float(d) for v in result.values() for d in v})
    grid = np.array(
      [
        [
          {float(d): a for d, a in result[common.key(result, n)].items()}.get(d, np.nan)
          for n in lengths
        ]
        for d in depths
      ]
    )
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(lengths)), [f"{n}{'*' if n > seq_len else ''}" for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set(title=f"passkey: {name}", xlabel="length (* beyond training)", ylabel="depth")
    fig.colorbar(image, ax=ax)
  ax = axes[0][-1]
  for name, result in named:
    points = sorted((int(n), float(np.mean(list(v.values())))) for n, v in result.items())
    ax.plot(*zip(*points), marker="o", label=name)
  ax.axvline(seq_len, color="gray", linestyle="--", label="training length")
  ax.set_xscale("log", base=2)
  ax.set(title="passkey: mean over depths", xlabel="length", ylim=(-0.02, 1.02))
  ax.legend(fontsize=7)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=100)


KIND = common.Kind(
  "passkey", evaluate_passkey, passkey_table, plot_passkey, "passkey.png", reads_text=True
)
