"""Kazemnejad et al. 2023 at small scale: one positional scheme on one task per run.

  python -m nopejax.train --config=configs/lengthgen.py:task=addition,scheme=t5,seed=1 --workdir=W
  python -m nopejax.sweep --config=configs/lengthgen.py --workdir=runs/lengthgen
  python -m nopejax.sweep --config=configs/lengthgen.py:hybrids --workdir=runs/hybrids
  python -m nopejax.sweep --config=configs/lengthgen.py:frontier --workdir=runs/frontier
  python -m nopejax.report --sweep=runs/lengthgen,runs/hybrids

The model (4 layers x 64, 268K parameters) at 3,000 steps of 64 documents fits copy, parity,
sort and summation with NoPE (the slowest scheme to fit); reverse at `lr=3e-3` (one NoPE seed
in three) and addition not at all; see the README's Results.

Schemes are the paper's five, per-layer hybrids it could not test, and the research frontier
(FIRE, KERPLE, xPos, CoPE, p-RoPE, NoPE with SSMax, a shared T5 table, randomized positions).
Training lengths are the paper's (copy/reverse up to 20, the others up to 8); test splits go to
40 and 16.
"""

from nopejax import data, experiment
from nopejax.data import tasks as task_lib

TASKS = ("copy", "reverse", "addition", "parity", "sort", "summation")
# scheme -> model overrides. Windows and temperature scales are shrunk to task lengths
# (documents of 20-90 tokens), so the hybrids' local layers really are local.
SCHEMES = {
  "nope": {"positions": "nope"},
  "t5": {"positions": "t5"},
  "alibi": {"positions": "alibi"},
  "rope": {"positions": "rope", "rope_fraction": 0.25},  # the paper's rotary: 25% of dims
  "abs": {"positions": "nope", "input_positions": "sinusoidal"},
  "smollm3": {"positions": "smollm3"},  # rope,rope,rope,nope
  "alternate": {"positions": "alternate"},  # nope,rope
  "rnope_swa": {"positions": "rnope_swa:16"},  # sliding-16 RoPE x3, full NoPE
  "llama4": {"positions": "llama4:16", "temperature_floor_scale": 16.0},  # chunked RoPE + NoPE
  # The research frontier (README, Positional schemes). Length scales shrink to the tasks' as
  # the windows do: FIRE's threshold and xPos's decay base to the training lengths, CoPE's
  # positions to cover the longest test document (90 tokens).
  "fire": {"positions": "fire", "fire_threshold": 32},
  "kerple_log": {"positions": "kerple_log"},
  "kerple_power": {"positions": "kerple_power"},
  "xpos": {"positions": "xpos", "rope_fraction": 0.25, "xpos_scale_base": 64.0},  # RoPE's dims
  "cope": {"positions": "cope", "cope_npos_max": 96},
  "prope": {"positions": "prope", "prope_fraction": 0.75},  # Barbero et al.'s best p
  "nope_ssmax": {"positions": "nope", "query_scaling": "ssmax"},
  "nope_headscale": {"positions": "nope", "query_scaling": "headscale"},
  "t5_shared": {"positions": "t5", "t5_shared": True},  # one table, as T5 and the paper
  "rope_random": {"positions": "rope", "rope_fraction": 0.25},
  "nope_random": {"positions": "nope"},
}
# scheme -> data overrides: Ruoss et al.'s randomized positions, drawn from [0, 256) (beyond every
# task's longest test document) in training; evaluation sees the real ones.
DATA = {"rope_random": {"random_positions_max": 256}, "nope_random": {"random_positions_max": 256}}
PAPER = ("nope", "t5", "alibi", "rope", "abs")
# The longest training document of each task in words, minus one (the row holds inputs):
# one document per row with no padding beyond the task's own longest example.
SEQ_LEN = {"copy": 44, "reverse": 44, "addition": 33, "parity": 33, "sort": 45, "summation": 23}
HYBRIDS = ("smollm3", "alternate", "rnope_swa", "llama4")
FRONTIER = (
  "fire",
  "kerple_log",
  "xpos",
  "cope",
  "prope",
  "nope_ssmax",
  "t5_shared",
  "rope_random",
)  # nope_random is not swept: a NoPE model never reads positions, so it trains bit for bit as
# nope does (docs/results/runs/checks, tests/test_frontier.py); `schemes=nope_random` runs it


def _arg(arg):
  return experiment.parse_arg(
    arg,
    task="copy",
    scheme="nope",
    seed=0,
    steps=3000,
    d_model=64,
    layers=4,
    hybrids=False,
    frontier=False,
    runlocal=False,
    tasks="+".join(TASKS),
    seeds=3,
    first_seed=0,
    seq_len=0,
    schemes="",
    lr=1e-3,
  )


def get_config(arg=None):
  a = _arg(arg)
  if a.scheme not in SCHEMES:
    raise ValueError(f"config arg scheme: unknown {a.scheme!r}; known: {', '.join(SCHEMES)}")
  c = experiment.base_config()
  c.model.d_model = a.d_model  # the smallest width that learns every task (see README Results)
  c.model.num_layers = a.layers  # 4: divisible by every hybrid's period
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.d_ff = 4 * a.d_model
  c.model.update(SCHEMES[a.scheme])
  c.model.scan_unroll = a.layers  # short models: no layer loop (faster steps on a CPU)
  c.data.tasks = a.task
  c.data.num_train = 20_000
  c.data.num_test = 50  # per test length
  c.data.seq_len = a.seq_len or SEQ_LEN.get(a.task, 64)  # 0: the task's longest training document
  c.data.pack = False  # as the demo: per-row documents, the paper's setting
  c.data.batch_size = 64
  c.data.seed = a.seed
  c.data.update(DATA.get(a.scheme, {}))
  c.model.vocab_size = data.vocab_size(c.data)
  c.opt.lr = a.lr  # reverse fits faster at 3e-3 (README Results)
  c.opt.warmup_steps = 100
  c.opt.weight_decay = 0.0
  c.train.steps = a.steps  # a fixed budget: schemes are compared at the same step
  c.train.seed = a.seed
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_batches = 4
  c.train.checkpoint_every = 1000
  c.train.progress = False  # sweeps log to files
  c.eval.max_examples = 32  # per length: one batch
  if a.runlocal:  # seconds: the smoke version the tests run
    c.model.d_model, c.model.d_ff, c.model.num_heads, c.model.num_kv_heads = 32, 64, 2, 2
    c.data.num_train, c.data.num_test, c.data.batch_size = 500, 4, 8
    c.data.train_length, c.data.test_length = 4, 6
    c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 2, 0, 4
    c.opt.warmup_steps = 1
    c.eval.max_examples = 4
  return c


def get_sweep(arg=None):
  """scheme x task x seed: the paper's five schemes, the hybrids with `:hybrids`, the frontier
  schemes with `:frontier`; `tasks`,
  `schemes` (`+`-separated), `seeds` and `first_seed` narrow it, e.g. `:tasks=copy,seeds=3`
  or `:seeds=2,first_seed=1` (seeds 1 and 2).

  Seed-major: a sweep stopped part-way has every task and scheme of its first seeds.
  """
  a = _arg(arg)
  given = {item.partition("=")[0] for item in (arg or "").split(",")}
  for key, plural in (
    ("task", "tasks=A+B"),
    ("scheme", "schemes=A+B"),
    ("seed", "seeds=N,first_seed=S"),
  ):
    if key in given:  # else a sweep given `task=sort` would silently sweep every task
      raise ValueError(f"config arg {key}: names one run's {key}; a sweep takes {plural}")
  schemes = (
    experiment.arg_names(a.schemes, "schemes", SCHEMES)
    if a.schemes
    else HYBRIDS
    if a.hybrids
    else FRONTIER
    if a.frontier
    else PAPER
  )
  tasks = experiment.arg_names(a.tasks, "tasks", sorted(task_lib.TASKS))
  seeds = tuple(range(a.first_seed, a.first_seed + a.seeds))
  if a.runlocal:  # the smoke sweep: seed 0 of the first task
    tasks, seeds = tasks[:1], (0,)
  return [{"scheme": s, "task": t, "seed": seed} for seed in seeds for t in tasks for s in schemes]
