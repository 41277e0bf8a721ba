"""Seconds on a CPU: the config the tests train end to end.

python -m nopejax.train --config=configs/tiny.py --workdir=/tmp/tiny
python -m nopejax.train --config=configs/tiny.py:positions=smollm3 --workdir=/tmp/tiny
"""

from nopejax import data, experiment


def get_config(arg=None):
  a = experiment.parse_arg(arg, positions="nope", task="copy", steps=20)
  c = experiment.base_config()
  c.model.d_model = 32  # tiny on purpose: the tests train it through the real command
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.num_kv_heads = 1  # GQA, so the grouped path is exercised
  c.model.d_ff = 64
  c.model.positions = a.positions  # a period or preset; `+` for commas in the arg string
  c.data.tasks = a.task
  c.data.train_length = 6  # short documents: rows of 32 tokens hold several
  c.data.test_length = 10
  c.data.num_train = 2000
  c.data.num_test = 20
  c.data.seq_len = 32
  c.data.batch_size = 8
  c.model.vocab_size = data.vocab_size(c.data)  # exactly the task vocabulary
  c.opt.lr = 3e-3
  c.opt.warmup_steps = 2
  c.train.steps = a.steps
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.eval_batches = 2
  c.train.checkpoint_every = 10
  c.train.progress = False  # tests read stdout
  c.eval.max_examples = 20
  return c


def get_sweep(arg=None):
  """Two tiny runs, so the sweep machinery is tested in seconds."""
  return [{"model.positions": p} for p in ("nope", "rope")]
