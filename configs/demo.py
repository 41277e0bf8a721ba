"""The README's demo: all-RoPE, all-NoPE and SmolLM3's 3:1 hybrid learn copy (lengths 1-20)
and are scored on lengths 1-40.

  python -m nopejax.sweep --config=configs/demo.py --workdir=runs/demo
  python -m nopejax.train --config=configs/demo.py:positions=smollm3 --workdir=runs/demo/one
"""

from nopejax import data, experiment


def get_config(arg=None):
  a = experiment.parse_arg(arg, positions="nope", task="copy", steps=2000, seed=0)
  c = experiment.base_config()
  c.model.d_model = 64  # ~200K parameters: learns copy in 1-2 minutes on 2 CPU cores
  c.model.num_layers = 4  # a 2-layer NoPE model does not learn copy
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.d_ff = 256
  c.model.positions = a.positions
  c.model.scan_unroll = 4  # four layers, no loop: 13% faster steps on a CPU
  c.data.tasks = a.task
  c.data.num_train = 20_000  # lengths 1..20 of the paper's copy task
  c.data.num_test = 32  # per test length 1..40
  c.data.seq_len = 48  # one copy document (at most 45 tokens at length 20) per row
  c.data.pack = False  # one example per row, as the reference runs
  c.data.batch_size = 64
  c.data.seed = a.seed
  c.model.vocab_size = data.vocab_size(c.data)
  c.opt.lr = 1e-3
  c.opt.warmup_steps = 100
  c.opt.weight_decay = 0.0  # tiny model, plenty of data: no regularisation needed
  c.train.steps = a.steps
  c.train.seed = a.seed
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.eval_batches = 4
  c.train.checkpoint_every = 500
  c.eval.max_examples = 32  # per length: one batch
  return c


def get_sweep(arg=None):
  """One run per layer pattern: all RoPE, all NoPE, SmolLM3 (rope,rope,rope,nope)."""
  return [{"model.positions": p} for p in ("rope", "nope", "smollm3")]
