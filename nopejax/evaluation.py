"""Length-generalization evaluation: task accuracy, language-model loss by context length and
passkey retrieval, with tables and plots; `eval.kinds` picks among them.

Tasks: exact match is real greedy generation with the KV cache (decode.py) from the prompt,
compared with the answer and its eos. The teacher-forced pass (the model reads prompt + answer
once) gives per-token accuracy, which still separates schemes where exact match beyond the
training length is 0 for all of them, and its own exact match, which must equal generation's
(greedy decoding produces the answer iff every step's argmax is the next answer token); both
are kept so the equality is checked on every run.

LM: held-out documents (`data.text_documents(..., 'validation')`) are read in windows of each
context length L that all end at the same anchors, and only each window's last
`score_tokens = data.seq_len // 2` targets are scored, so every length scores the same tokens
and differs only in how much context precedes them. Long windows go through the blockwise
attention path (`model.attention_impl=auto`, above `model.blockwise_above`), in batches of at
most `eval.batch_size * data.seq_len` tokens, so memory stays bounded.

Passkey: greedy generation after each prompt of `data.passkey_examples(length, depth)`.

results.json: {run: {task: {length: metrics}, 'lm': {length: metrics},
'passkey': {length: {depth: accuracy}}}} (tasks at the top level, as before lm and passkey).
"""

import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from nopejax import data as data_lib
from nopejax import datasets
from nopejax import decode
from nopejax import experiment
from nopejax import model_api
from nopejax import positions as pos_lib
from nopejax import tokenizers
from nopejax import training

KINDS = ("tasks", "lm", "passkey")
SECTIONS = ("lm", "passkey")  # results keys that are not task names


# ---------------------------------------------------------------- config


def kinds(cfg):
  """The eval.kinds list, or a ValueError naming the unknown one and the known ones."""
  names = [k.strip() for k in str(cfg.eval.kinds).split(",") if k.strip()]
  if not names:
    raise ValueError(f"eval.kinds: none given; known: {', '.join(KINDS)}")
  for name in names:
    if name not in KINDS:
      raise ValueError(f"eval.kinds: unknown kind {name!r}; known: {', '.join(KINDS)}")
  if ("lm" in names or "passkey" in names) and tokenizers.resolve(cfg.data) == "task":
    raise ValueError("eval.kinds: lm and passkey read text, which the task-word tokenizer "
                     "cannot encode; use a text config (data.tokenizer=byte or another)")
  return names


def eval_spec(cfg):
  """The run's ModelSpec with evaluation-only settings: eval.rope_scaling and its factor."""
  spec = experiment.validate(cfg)
  scaling, factor = cfg.eval.rope_scaling, cfg.eval.rope_scaling_factor
  if scaling not in pos_lib.ROPE_SCALINGS:
    raise ValueError(f"eval.rope_scaling: unknown value {scaling!r}; "
                     f"allowed: {', '.join(pos_lib.ROPE_SCALINGS)}")
  if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
    raise ValueError(f"eval.rope_scaling_factor: expected a number >= 1, got {factor!r}")
  if scaling == "none":
    return spec
  return dataclasses.replace(spec, rope_scaling=scaling, rope_scaling_factor=float(factor),
                             rope_original_len=cfg.data.seq_len)


def _check_learned(spec, length, what):
  if spec.input_positions == "learned" and length > spec.max_len:
    raise ValueError(f"{what} needs {length} positions but the learned input positions cover "
                     f"model.max_len={spec.max_len}; evaluate shorter lengths")


def lm_lengths(cfg):
  """Context lengths of the LM evaluation: eval.lm_lengths, else 0.5x to 8x data.seq_len."""
  if cfg.eval.lm_lengths:
    try:
      lengths = [int(n) for n in str(cfg.eval.lm_lengths).split(",") if n.strip()]
    except ValueError:
      raise ValueError(f"eval.lm_lengths: expected comma-separated integers, got "
                       f"{cfg.eval.lm_lengths!r}") from None
  else:
    lengths = [cfg.data.seq_len // 2] + [cfg.data.seq_len * k for k in (1, 2, 4, 8)]
  if not lengths or min(lengths) < 2:
    raise ValueError(f"eval.lm_lengths: need lengths of at least 2, got {lengths}")
  return sorted(set(lengths))


def _limit(cfg):
  return cfg.eval.max_examples or None


# ---------------------------------------------------------------- tasks


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


def _chunks(examples, batch_size):
  """Batches of `batch_size`, the last padded with copies of the first example so every batch of
  a length has one shape (one compile); returns (batch, number of real examples)."""
  for i in range(0, len(examples), batch_size):
    chunk = examples[i: i + batch_size]
    rows = batch_size if len(examples) > batch_size else len(chunk)
    yield chunk + [chunk[0]] * (rows - len(chunk)), len(chunk)


def generated_exact_match(spec, params, examples, *, pad_id, batch_size):
  """Per example: does greedy decoding with the cache reproduce the answer (and its eos)?"""
  matches = []
  longest = max(len(e["answer"]) for e in examples)
  max_new = -(-longest // 8) * 8  # a multiple of 8, so neighbouring lengths share a program
  for chunk, real in _chunks(examples, batch_size):
    out = decode.generate(spec, params, [e["prompt"] for e in chunk], max_new, pad_id=pad_id)
    matches += [list(row[: len(e["answer"])]) == e["answer"] for row, e in zip(out, chunk)][:real]
  return np.asarray(matches)


def task_accuracy(score, params, examples, *, pad_id, batch_size, spec=None):
  """Exact match (generated when `spec` is given) and teacher-forced accuracy of `examples`."""
  correct, total = [], []
  for chunk, real in _chunks(examples, batch_size):
    c, t = score(params, *_pad_batch(chunk, pad_id))
    correct.append(np.asarray(c)[:real])
    total.append(np.asarray(t)[:real])
  correct, total = np.concatenate(correct), np.concatenate(total)
  forced = correct == total
  result = {"exact_match": float(np.mean(forced)),
            "token_accuracy": float(correct.sum() / max(total.sum(), 1)),
            "exact_match_teacher_forced": float(np.mean(forced))}
  if spec is not None:
    result["exact_match"] = float(np.mean(generated_exact_match(
        spec, params, examples, pad_id=pad_id, batch_size=batch_size)))
  return result


def evaluate_tasks(cfg, spec, params):
  """{task: {length: metrics}} over every test length of every task in the config."""
  score = make_scorer(spec)
  pad_id = tokenizers.get_tokenizer(cfg.data).pad_id
  results = {}
  for task in data_lib.task_names(cfg.data):
    results[task] = {}
    for length in data_lib.test_lengths(cfg.data, task):
      examples = data_lib.task_examples(cfg.data, task, f"test_{length}")[:_limit(cfg)]
      _check_learned(spec, max(len(e["prompt"]) + len(e["answer"]) for e in examples),
                     f"task {task} at length {length}")
      results[task][length] = task_accuracy(score, params, examples, pad_id=pad_id,
                                            batch_size=cfg.eval.batch_size, spec=spec)
  return results


def train_length(cfg, task):
  return datasets.task_lengths(cfg.data, task)[0]


# ---------------------------------------------------------------- language modelling


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
      inputs.append(doc[end - length:end])
      targets.append(doc[end - length + 1:end + 1])
  if not inputs:
    raise ValueError(f"eval.lm_lengths: no validation document has the {longest + 1} tokens "
                     "the longest context needs; lower eval.lm_lengths or use a larger corpus")
  return np.stack(inputs).astype(np.int32), np.stack(targets).astype(np.int32)


def make_lm_scorer(spec):
  @jax.jit
  def nll(params, inputs_BT, targets_BT, mask_BT):
    logits_BTV = model_api.forward(spec, params, inputs_BT)
    logp_BT = jnp.take_along_axis(jax.nn.log_softmax(logits_BTV, -1), targets_BT[..., None],
                                  -1)[..., 0]
    return -jnp.sum(logp_BT * mask_BT)
  return nll


def lm_loss(nll, params, inputs, targets, mask, rows):
  """Summed cross-entropy (nats) of the masked targets, `rows` windows at a time."""
  total = 0.0
  for i in range(0, len(inputs), rows):
    pad = ((0, max(0, i + rows - len(inputs))), (0, 0))
    total += float(nll(params, np.pad(inputs[i:i + rows], pad), np.pad(targets[i:i + rows], pad),
                       np.pad(mask[i:i + rows], pad)))
  return total


def _num_bytes(tok, targets, mask):
  scored = targets[mask > 0]
  if tok.name == "byte":
    return int(np.sum(scored >= tokenizers.NUM_SPECIAL))
  # Other tokenizers: the byte length of the decoded text (approximate at window edges).
  return sum(len(tok.decode(row[m > 0].tolist()).encode()) for row, m in zip(targets, mask))


def evaluate_lm(cfg, spec, params):
  """{length: {loss, perplexity, bits_per_byte, tokens, windows}} on held-out text."""
  lengths = lm_lengths(cfg)
  _check_learned(spec, max(lengths), f"eval.lm_lengths={max(lengths)}")
  tok = tokenizers.get_tokenizer(cfg.data)
  documents = data_lib.text_documents(cfg.data, "validation")
  score_tokens = max(1, min(cfg.data.seq_len // 2, min(lengths)))
  nll = make_lm_scorer(spec)
  budget = cfg.eval.batch_size * cfg.data.seq_len  # tokens per batch, the same at every length
  results = {}
  for length in lengths:
    inputs, targets = lm_windows(documents, length, max(lengths), score_tokens, _limit(cfg))
    mask = np.zeros(inputs.shape, np.float32)
    mask[:, -score_tokens:] = 1.0
    rows = max(1, min(len(inputs), budget // length))
    ce = lm_loss(nll, params, inputs, targets, mask, rows)
    tokens = float(mask.sum())
    loss = ce / tokens
    results[length] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                       "bits_per_byte": ce / math.log(2) / max(_num_bytes(tok, targets, mask), 1),
                       "tokens": tokens, "windows": len(inputs)}
  return results


# ---------------------------------------------------------------- passkey


def _passkey_data_cfg(cfg):
  """The data config passkey examples are read with: a text run's own would also generate
  data.num_train training documents of a dataset it never trains on."""
  data_cfg = cfg.data.copy_and_resolve_references()
  if data_cfg.kind != "passkey":
    data_cfg.num_train, data_cfg.num_test = 1, 1
  return data_cfg


def evaluate_passkey(cfg, spec, params):
  """{length: {depth: accuracy}}: the generated key must equal the answer exactly."""
  data_cfg = _passkey_data_cfg(cfg)
  tok = tokenizers.get_tokenizer(data_cfg)
  budget = cfg.eval.batch_size * cfg.data.seq_len
  results = {}
  for length in data_cfg.passkey_lengths:
    _check_learned(spec, length, f"data.passkey_lengths={length}")
    results[length] = {}
    for depth in data_cfg.passkey_depths:
      examples = data_lib.passkey_examples(data_cfg, length, depth)[:_limit(cfg)]
      rows = max(1, min(cfg.eval.batch_size, budget // length))
      matches = generated_exact_match(spec, params, examples, pad_id=tok.pad_id,
                                      batch_size=rows)
      results[length][depth] = float(np.mean(matches))
  return results


# ---------------------------------------------------------------- running


def evaluate(cfg, params, spec=None):
  """Every kind of eval.kinds for one run: {task: ..., 'lm': ..., 'passkey': ...}."""
  names = kinds(cfg)
  spec = spec or eval_spec(cfg)
  results = {}
  if "tasks" in names:
    if cfg.data.kind != "tasks":
      raise ValueError(f"eval.kinds: tasks needs data.kind=tasks, got {cfg.data.kind!r}")
    results.update(evaluate_tasks(cfg, spec, params))
  if "lm" in names:
    results["lm"] = evaluate_lm(cfg, spec, params)
  if "passkey" in names:
    results["passkey"] = evaluate_passkey(cfg, spec, params)
  return results


def evaluate_runs(workdirs, config=None, eval_overrides=None, cache=False):
  """({run name: results}, config of the first run) for each workdir.

  Each run uses its own config.json unless `config` is given; `eval_overrides` (an `eval`
  group) replaces every run's, so runs are compared under the same evaluation settings.
  With `cache`, each run's results are also written to WORKDIR/eval/ and reused while its
  newest checkpoint step and eval group are those they were computed for.
  """
  runs, first = {}, None
  for workdir in workdirs:
    run_cfg = config if config is not None else training.load_config(workdir)
    if eval_overrides is not None:
      run_cfg = run_cfg.copy_and_resolve_references()
      run_cfg.eval = eval_overrides
    name = os.path.basename(os.path.normpath(workdir))
    key = {"step": _newest_step(workdir), "eval": run_cfg.eval.to_dict()}
    results = _cached(workdir, name, key) if cache else None
    if results is None:
      start = time.perf_counter()
      spec = eval_spec(run_cfg)
      kinds(run_cfg)
      results = evaluate(run_cfg, training.latest_params(run_cfg, workdir), spec)
      if cache:
        out = os.path.join(workdir, "eval")
        write_outputs({name: results}, run_cfg, out)
        with open(os.path.join(out, CACHE_KEY), "w") as f:
          json.dump(dict(key, seconds=time.perf_counter() - start), f)
    runs[name] = results
    first = first or run_cfg
  return runs, first


# Beside a run's eval/results.json: the step and eval group they are for, and the seconds taken.
CACHE_KEY = "evaluated.json"


def _newest_step(workdir):
  path = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(path) if n.isdigit()] if os.path.isdir(path) else []
  return max(steps, default=None)


def _cached(workdir, name, key):
  """The run's results from WORKDIR/eval when computed for `key`, else None."""
  out = os.path.join(workdir, "eval")
  try:
    with open(os.path.join(out, CACHE_KEY)) as f:
      stored = json.load(f)
    if {k: stored.get(k) for k in key} != json.loads(json.dumps(key)):
      return None
    with open(os.path.join(out, "results.json")) as f:
      return json.load(f)[name]
  except (OSError, ValueError, KeyError):
    return None


# ---------------------------------------------------------------- tables


def _tasks_of(runs):
  return sorted({t for r in runs.values() for t in r if t not in SECTIONS})


def markdown_table(runs, metric, cfg):
  """One row per (run, task), one column per test length; `*` marks lengths beyond training."""
  lines = []
  for task in _tasks_of(runs):
    lengths = sorted({int(n) for r in runs.values() for n in r.get(task, {})})
    limit = train_length(cfg, task)
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


def lm_table(runs, cfg):
  """Bits per byte and perplexity by context length, one row per run."""
  rows = {name: {int(n): m for n, m in r["lm"].items()} for name, r in runs.items() if "lm" in r}
  if not rows:
    return ""
  lengths = sorted({n for r in rows.values() for n in r})
  seq_len = cfg.data.seq_len
  head = " | ".join(f"{n}{'*' if n > seq_len else ''}" for n in lengths)
  lines = []
  for metric in ("bits_per_byte", "perplexity"):
    lines += [f"**lm** ({metric} of the last tokens of each window, by context length; "
              f"* = beyond training length {seq_len})\n", f"| run | {head} |",
              "|---|" + "---|" * len(lengths)]
    for name, r in rows.items():
      lines.append(f"| {name} | " + " | ".join(
          f"{r[n][metric]:.3f}" if n in r else "" for n in lengths) + " |")
    lines.append("")
  return "\n".join(lines)


def passkey_table(runs, cfg):
  """Passkey accuracy: one row per (run, depth), one column per length."""
  rows = {name: r["passkey"] for name, r in runs.items() if "passkey" in r}
  if not rows:
    return ""
  lengths = sorted({int(n) for r in rows.values() for n in r})
  seq_len = cfg.data.seq_len
  lines = [f"**passkey** (accuracy by length and needle depth; * = beyond training length "
           f"{seq_len})\n",
           "| run | depth | " + " | ".join(f"{n}{'*' if n > seq_len else ''}" for n in lengths)
           + " |", "|---|---|" + "---|" * len(lengths)]
  for name, r in rows.items():
    by_length = {int(n): {float(d): a for d, a in v.items()} for n, v in r.items()}
    for depth in sorted({d for v in by_length.values() for d in v}):
      cells = [f"{by_length[n][depth]:.2f}" if depth in by_length.get(n, {}) else ""
               for n in lengths]
      lines.append(f"| {name} | {depth:g} | " + " | ".join(cells) + " |")
  lines.append("")
  return "\n".join(lines)


# ---------------------------------------------------------------- plots


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot(runs, cfg, path):
  """Accuracy against length, one panel per (task, metric), the training length marked."""
  plt = pyplot()
  tasks = _tasks_of(runs)
  metrics = ("exact_match", "token_accuracy")
  fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.2 * len(tasks)), squeeze=False)
  for row, task in enumerate(tasks):
    for col, metric in enumerate(metrics):
      ax = axes[row][col]
      _plot_runs(ax, runs, task, metric)
      ax.axvline(train_length(cfg, task) + 0.5, color="gray", linestyle="--",
                 label="training length")
      ax.set(title=f"{task}: {metric.replace('_', ' ')}", xlabel="length", ylim=(-0.02, 1.02))
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_runs(ax, runs, section, metric):
  """One line per run: `metric` against the lengths of results[run][section]."""
  for name, results in runs.items():
    points = sorted((int(n), m[metric]) for n, m in results.get(section, {}).items())
    if points:
      ax.plot(*zip(*points), marker="o", label=name)


def plot_lm(runs, cfg, path):
  """Bits per byte and perplexity against context length (log scale), training length marked."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, metric in zip(axes, ("bits_per_byte", "perplexity")):
    _plot_runs(ax, runs, "lm", metric)
    ax.axvline(cfg.data.seq_len, color="gray", linestyle="--", label="training length")
    ax.set_xscale("log", base=2)
    ax.set(title=f"lm: {metric.replace('_', ' ')}", xlabel="context length (tokens)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_passkey(runs, cfg, path):
  """One heatmap per run (depth x length) and accuracy by length averaged over depths."""
  plt = pyplot()
  named = [(name, r["passkey"]) for name, r in runs.items() if "passkey" in r]
  fig, axes = plt.subplots(1, len(named) + 1, figsize=(4.2 * (len(named) + 1), 3.6),
                           squeeze=False)
  seq_len = cfg.data.seq_len
  for ax, (name, result) in zip(axes[0], named):
    lengths = sorted(int(n) for n in result)
    depths = sorted({float(d) for v in result.values() for d in v})
    grid = np.array([[{float(d): a for d, a in result[_key(result, n)].items()}.get(d, np.nan)
                      for n in lengths] for d in depths])
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
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _key(mapping, n):
  """`n` as the mapping spells it: int keys in memory, strings once read back from JSON."""
  return n if n in mapping else str(n)


def write_outputs(runs, cfg, out_dir):
  """results.json, tables.md and a PNG per kind present (accuracy, lm, passkey) in out_dir;
  returns the tables' text."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(runs, f, indent=2)
  parts = []
  if _tasks_of(runs):
    parts += [markdown_table(runs, m, cfg) for m in ("exact_match", "token_accuracy")]
    plot(runs, cfg, os.path.join(out_dir, "accuracy.png"))
  if any("lm" in r for r in runs.values()):
    parts.append(lm_table(runs, cfg))
    plot_lm(runs, cfg, os.path.join(out_dir, "lm.png"))
  if any("passkey" in r for r in runs.values()):
    parts.append(passkey_table(runs, cfg))
    plot_passkey(runs, cfg, os.path.join(out_dir, "passkey.png"))
  text = "\n".join(parts)
  with open(os.path.join(out_dir, "tables.md"), "w") as f:
    f.write(text)
  return text


def outputs(out_dir):
  """The files write_outputs left in out_dir, for the command's last line."""
  return sorted(f for f in os.listdir(out_dir) if f.endswith((".json", ".md", ".png")))
