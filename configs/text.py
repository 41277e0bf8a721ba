"""Byte-level language model on the default corpus (this Python's standard library sources).

  python -m nopejax.train --config=configs/text.py:positions=smollm3 --workdir=runs/text/smollm3
  python -m nopejax.sweep --config=configs/text.py --workdir=runs/text
  python -m nopejax.sweep --config=configs/text.py:passkey_from=runs/text --workdir=runs/passkey

The second stage (`passkey_from`) starts each scheme from its language model in that sweep and
teaches it passkey retrieval at 256 and 512 tokens (the training context), then tests retrieval
from 256 to 4,096 tokens: a model pretrained on text alone never learns to retrieve at this scale.
"""

import os

from nopejax import data, experiment

PATTERNS = ("rope", "nope", "smollm3", "rnope_swa:128")


def _arg(arg):
  return experiment.parse_arg(
    arg,
    positions="nope",
    seq_len=512,
    steps=1000,
    d_model=64,
    layers=4,
    seed=0,
    runlocal=False,
    passkey_from="",
    passkey_steps=500,
    patterns="",
  )


def get_config(arg=None):
  a = _arg(arg)
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
  c.data.seq_len = a.seq_len  # training context; evaluation goes to 8x this
  c.data.batch_size = 8  # 4,096 tokens a step: the four-run sweep fits an hour of one CPU core
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
    32  # LM windows per length (256 scored tokens each); passkey prompts per cell
  )
  c.data.passkey_lengths = (256, 512, 1024, 2048, 4096)  # 0.5x to 8x the training context
  c.data.passkey_depths = (0.0, 0.5, 1.0)
  if a.passkey_from:  # stage two: retrieval within the training context, tested beyond it
    c.data.kind = "passkey"
    c.data.passkey_train_lengths = (a.seq_len // 2, a.seq_len)
    c.train.init_from = os.path.join(a.passkey_from, f"positions={a.positions}")
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
    if a.passkey_from:  # the shortest passkey document is 250 bytes
      c.data.seq_len, c.data.passkey_train_lengths = 320, (320,)
      c.data.num_train, c.data.num_test = 16, 4
  c.data.num_passkey = c.eval.max_examples  # prompts per (length, depth) cell
  return c


def get_sweep(arg=None):
  """All RoPE, all NoPE, SmolLM3's hybrid and Cohere's RNoPE-SWA (sliding 128 of 512);
  `patterns` (`+`-separated) narrows it, e.g. `:patterns=rope+nope`."""
  a = _arg(arg)
  patterns = experiment.arg_names(a.patterns, "patterns", PATTERNS) if a.patterns else PATTERNS
  return [{"positions": p} for p in patterns]
