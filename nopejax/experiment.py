"""The whole experiment config: defaults for every group, the `arg` parser, and validation.

Config files in configs/ start from `base_config()` and override; `validate` runs once at start
and every error names the key and what is allowed.
"""

import ast
import math

import ml_collections
from ml_collections import config_dict

from nopejax import config as model_config_lib
from nopejax import data as data_lib

SCHEDULES = ("cosine", "wsd", "constant")


def opt_config():
  c = ml_collections.ConfigDict()
  c.lr = 1e-3  # peak learning rate
  c.schedule = "cosine"  # cosine | wsd (warmup-stable-decay, SmolLM3's) | constant
  c.warmup_steps = 100  # linear warmup from 0
  c.decay_fraction = 0.1  # wsd: share of the steps spent decaying at the end
  c.min_lr_ratio = 0.1  # final lr as a share of the peak (cosine and wsd)
  c.b1 = 0.9  # AdamW first-moment decay
  c.b2 = 0.95  # AdamW second-moment decay
  c.eps = 1e-8  # AdamW epsilon
  c.weight_decay = 0.1  # decoupled, masked off norm scales and biases
  c.clip_norm = 1.0  # global gradient-norm clipping; 0 disables
  c.z_loss = 0.0  # weight of log(Z)^2, keeps the softmax normaliser near 1 (PaLM uses 1e-4)
  c.microbatches = 1  # gradient accumulation: the batch is split into this many parts
  return c


def train_config():
  c = ml_collections.ConfigDict()
  c.steps = 1000  # optimizer steps
  c.seed = 0  # parameter init and step RNG
  c.log_every = 50  # steps between metric reads from the device (the only host syncs)
  c.eval_every = 500  # steps between validation-loss evaluations; 0 disables
  c.eval_batches = 8  # validation batches per evaluation
  c.checkpoint_every = 500  # steps between checkpoints (always one at the end)
  c.keep_checkpoints = 3  # how many recent checkpoints orbax keeps
  c.max_bad_steps = 10  # consecutive non-finite steps (skipped) before the run stops
  c.init_from = ""  # a workdir holding params/ (e.g. from `nopejax.hf import`) to start from
  c.progress = True  # rich progress bar on the terminal
  c.export_params = True  # write WORKDIR/params/ (params only) at the end of training
  return c


def mesh_config():
  c = ml_collections.ConfigDict()
  c.data = -1  # data-parallel axis; -1 takes the devices the other axes leave
  c.fsdp = 1  # parameters and optimizer state sharded over this axis
  c.tensor = 1  # Megatron-style tensor parallelism over heads and MLP hidden
  # Logical axis -> mesh axes; the model names its axes, only this table places them.
  c.rules = (
      ("batch", ("data", "fsdp")), ("embed", "fsdp"), ("vocab", "tensor"),
      ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"),
      ("length", None), ("head_dim", None), ("layers", None), ("norm", None),
      ("buckets", None),
  )
  return c


def eval_config():
  c = ml_collections.ConfigDict()
  c.kinds = "tasks"  # comma list of: tasks, lm, passkey
  c.batch_size = 64  # examples per evaluation batch
  c.max_examples = 200  # per task and length; None or 0: all
  c.lm_lengths = config_dict.placeholder(str)  # comma list of context lengths; None: 0.5x..8x seq_len
  c.rope_scaling = "none"  # none | linear | ntk | yarn, applied at evaluation only
  c.rope_scaling_factor = 1.0  # context extension factor for rope_scaling
  return c


def base_config():
  c = ml_collections.ConfigDict()
  c.model = model_config_lib.model_config()
  c.data = data_lib.default_config()
  c.opt = opt_config()
  c.train = train_config()
  c.mesh = mesh_config()
  c.eval = eval_config()
  return c


def parse_arg(arg, **defaults):
  """big_vision-style `key=value,flag` string -> ConfigDict typed like the defaults.

  Layer patterns cannot hold commas here; write them with `+` (rope+rope+rope+nope) or use a
  preset name. A bare word sets a boolean default to True.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config arg: unknown key {key!r}; known: {', '.join(sorted(defaults))}")
    if not eq:
      result[key] = True
      continue
    default = defaults[key]
    if isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      result[key] = type(default)(ast.literal_eval(value))
    else:
      result[key] = value.replace("+", ",")
  return result


def arg_names(value, key, known=None):
  """A config arg's list of names (`+`- or comma-separated) as a tuple, each one of `known`."""
  names = tuple(value.replace("+", ",").split(","))
  unknown = [n for n in names if known is not None and n not in known]
  if unknown:
    raise ValueError(f"config arg {key}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
  return names


def _positive(value, key, kind=int):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or (
      kind is int and not float(value).is_integer()) or not math.isfinite(value):
    raise ValueError(f"{key}: expected a positive {kind.__name__}, got {value!r}")


def validate(cfg):
  """Checks every group before anything is built or compiled; returns the ModelSpec."""
  spec = model_config_lib.resolve(cfg.model)
  data_lib.validate(cfg.data, spec.vocab_size)
  _positive(cfg.train.steps, "train.steps")
  _positive(cfg.train.log_every, "train.log_every")
  _positive(cfg.train.checkpoint_every, "train.checkpoint_every")
  _positive(cfg.train.keep_checkpoints, "train.keep_checkpoints")
  _positive(cfg.train.max_bad_steps, "train.max_bad_steps")
  _positive(cfg.opt.lr, "opt.lr", float)
  _positive(cfg.opt.microbatches, "opt.microbatches")
  if cfg.opt.lr > 1.0:
    raise ValueError(f"opt.lr: {cfg.opt.lr} is out of range; expected a value in (0, 1]")
  if cfg.opt.schedule not in SCHEDULES:
    raise ValueError(f"opt.schedule: unknown value {cfg.opt.schedule!r}; "
                     f"allowed: {', '.join(SCHEDULES)}")
  if cfg.opt.warmup_steps < 0 or cfg.opt.warmup_steps > cfg.train.steps:
    raise ValueError(f"opt.warmup_steps: expected 0..train.steps={cfg.train.steps}, "
                     f"got {cfg.opt.warmup_steps}")
  if not 0 <= cfg.opt.decay_fraction <= 1:
    raise ValueError(f"opt.decay_fraction: expected a value in [0, 1], got {cfg.opt.decay_fraction}")
  if cfg.data.batch_size % cfg.opt.microbatches:
    raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by "
                     f"opt.microbatches={cfg.opt.microbatches}")
  if spec.input_positions == "learned" and cfg.data.seq_len > spec.max_len:
    raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_len={spec.max_len} "
                     "of the learned input positions")
  return spec
