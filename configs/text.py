"""Byte-level language model on the default corpus (this Python's standard library sources).

  python -m nopejax.train --config=configs/text.py:positions=smollm3 --workdir=runs/text/smollm3
  python -m nopejax.sweep --config=configs/text.py --workdir=runs/text
  python -m nopejax.sweep --config=configs/text.py:passkey_from=runs/text --workdir=runs/passkey
  python -m nopejax.sweep --config=configs/text.py:long --workdir=runs/text_long
  python -m nopejax.sweep --config=configs/text.py:long,passkey_from=runs/text_long \
      --workdir=runs/passkey_long

The second stage (`passkey_from`) starts each scheme from its language model in that sweep and
teaches it passkey retrieval at 256 and 512 tokens (the training context), then tests retrieval
from 256 to 4,096 tokens: a model pretrained on text alone never learns to retrieve at this scale.

`long` is the second edition (issue 24): the same model and tokens per step trained at 2,048
tokens on the flash path, LM evaluation from 1,024 to 32,768 tokens (16x), passkey retrieval
after the second stage from 1,024 to 16,384, and the schemes of LONG_SCHEMES, run as
`scheme=NAME` (`schemes` narrows them).
"""

import os

from nopejax import data, experiment

PATTERNS = ("rope", "nope", "smollm3", "rnope_swa:128")
# `long`: scheme -> model overrides. Local windows ({w}) keep the first edition's quarter of the
# training context (512 of 2,048); Llama 4's temperature floor is its chunk, as released.
LONG_SCHEMES = {
  "rope": {"positions": "rope"},
  "nope": {"positions": "nope"},
  "nope_ssmax": {"positions": "nope", "query_scaling": "ssmax"},
  "smollm3": {"positions": "smollm3"},
  "rnope_swa": {"positions": "rnope_swa:{w}"},
  "llama4": {"positions": "llama4:{w}", "temperature_floor_scale": "{w}"},
}
LONG_SEQ_LEN = 2048
LONG_LM_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
LONG_PASSKEY_LENGTHS = (1024, 2048, 4096, 8192, 16384)


def _arg(arg):
  return experiment.parse_arg(
    arg,
    positions="nope",
    seq_len=0,  # 0: 512, or LONG_SEQ_LEN with `long`
    steps=1000,
    d_model=64,
    layers=4,
    seed=0,
    runlocal=False,
    passkey_from="",
    passkey_steps=500,
    patterns="",
    long=False,
    scheme="rope",
    schemes="",
  )


def get_config(arg=None):
  a = _arg(arg)
  seq_len = a.seq_len or (LONG_SEQ_LEN if a.long else 512)
  c = experiment.base_config()
  c.model.d_model = a.d_model
  c.model.num_layers = a.layers  # 4: divisible by every preset's period
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.d_ff = 4 * a.d_model
  c.model.positions = a.positions  # preset or `+`-separated pattern
  c.data.kind = "text"
  c.data.tokenizer = "byte"  # 256 bytes + pad/bos/eos: nothing to train or download
  c.data.corpus = "stdlib"  # the .py files beside os.py: real, long, on every machine
  c.data.seq_len = seq_len  # training context; evaluation goes to 8x this (16x with `long`)
  c.data.batch_size = 4096 // seq_len  # 4,096 tokens a step: 8 rows of 512
  c.data.seed = a.seed
  c.model.vocab_size = data.vocab_size(c.data)
  c.opt.lr = 2e-3
  c.opt.schedule = "wsd"
  c.opt.warmup_steps = 100
  c.train.steps = a.steps
  c.train.seed = a.seed
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.eval.kinds = "lm,passkey"
  c.eval.max_examples = (
    32  # LM windows per length (seq_len / 2 scored tokens each); passkey prompts per cell
  )
  c.data.passkey_lengths = (256, 512, 1024, 2048, 4096)  # 0.5x to 8x the training context
  c.data.passkey_depths = (0.0, 0.5, 1.0)
  if a.long:
    window = (64 if a.runlocal else seq_len) // 4  # runlocal's first stage trains at 64
    scheme = LONG_SCHEMES[experiment.arg_names(a.scheme, "scheme", LONG_SCHEMES)[0]]
    for key, value in scheme.items():
      c.model[key] = type(c.model[key])(str(value).format(w=window))
    c.model.flash_above = seq_len // 2  # the flash path in training and at every longer length
    c.eval.kinds = "lm"  # passkey after the retrieval stage only: all zero before it
    c.eval.lm_lengths = ",".join(map(str, LONG_LM_LENGTHS))
    c.data.passkey_lengths = LONG_PASSKEY_LENGTHS
    # 4 windows of 1,024 scored tokens, 12 prompts a length: a 32k forward takes ~1.5 min a core
    c.eval.max_examples = 4
  if a.passkey_from:  # stage two: retrieval within the training context, tested beyond it
    run = f"scheme={a.scheme}" if a.long else f"positions={a.positions}"
    c.data.kind = "passkey"
    c.data.passkey_train_lengths = (seq_len // 2, seq_len)
    c.train.init_from = os.path.join(a.passkey_from, run)
    c.train.steps = a.passkey_steps
    c.opt.lr, c.opt.warmup_steps = 1e-3, 50
    c.train.eval_every = c.train.checkpoint_every = a.passkey_steps // 2
    c.eval.kinds = "passkey"
  if a.runlocal:
    c.model.d_model, c.model.d_ff = 32, 64
    c.data.seq_len, c.data.batch_size = 64, 4
    c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 2, 0, 4
    c.opt.warmup_steps = 1
    c.data.passkey_lengths, c.data.passkey_depths = (320, 512), (0.0, 1.0)
    c.eval.max_examples = 2
    c.eval.lm_lengths = None  # 0.5x to 8x the shrunk context
    if a.long:
      c.model.flash_above = 32
    if a.passkey_from:  # the shortest passkey document is 250 bytes
      c.data.seq_len, c.data.passkey_train_lengths = 320, (320,)
      c.data.num_train, c.data.num_test = 16, 4
  c.data.num_passkey = c.eval.max_examples  # prompts per (length, depth) cell
  return c


def get_sweep(arg=None):
  """All RoPE, all NoPE, SmolLM3's hybrid and Cohere's RNoPE-SWA (sliding 128 of 512);
  `patterns` (`+`-separated) narrows it, e.g. `:patterns=rope+nope`. With `long`, the schemes
  of LONG_SCHEMES (`schemes` narrows them, e.g. `:long,schemes=rope+nope`)."""
  a = _arg(arg)
  if a.long:
    names = experiment.arg_names(a.schemes, "schemes", LONG_SCHEMES) if a.schemes else LONG_SCHEMES
    return [{"scheme": s} for s in names]
  patterns = experiment.arg_names(a.patterns, "patterns", PATTERNS) if a.patterns else PATTERNS
  return [{"positions": p} for p in patterns]
