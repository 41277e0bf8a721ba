"""The whole experiment config: defaults for every group, the `arg` parser, and the one
validation pass.

Config files in configs/ start from `base_config()` and override. `resolve(cfg)` runs once, at
start, and turns the ConfigDict into an `Experiment` of frozen specs, one per group; code below
the entry points takes specs, never the ConfigDict. Every error names the key and what is
allowed.
"""

import ast
import dataclasses

import ml_collections
from absl import logging

from nopejax import specs
from nopejax.data import spec as data_spec
from nopejax.eval import spec as eval_spec
from nopejax.model import spec as model_spec
from nopejax.parallel import spec as mesh_spec
from nopejax.train import spec as train_spec


def base_config():
  c = ml_collections.ConfigDict()
  c.model = model_spec.model_config()
  c.data = data_spec.default_config()
  c.opt = train_spec.opt_config()
  c.train = train_spec.train_config()
  c.mesh = mesh_spec.mesh_config()
  c.eval = eval_spec.eval_config()
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


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A validated config: one frozen spec per group, and the config itself as JSON text (what
  WORKDIR/config.json and every checkpoint record)."""

  model: model_spec.ModelSpec
  data: data_spec.DataSpec
  opt: train_spec.OptSpec
  train: train_spec.TrainSpec
  mesh: mesh_spec.MeshSpec
  eval: eval_spec.EvalSpec
  config_json: str = "{}"


def _check_random_positions(model, data):
  """Training positions drawn from [0, data.random_positions_max) must fit the model's learned
  table (and xPos's key scale); a model that reads no positions trains as without them."""
  top = data.random_positions_max
  if not top:
    return
  model.check_length(top, f"data.random_positions_max={top}")
  reads = model.input_positions != "none" or any(
    t.scheme != "nope" or t.window != "full" or t.query_scaling in ("llama4", "ssmax")
    for t in model.layers
  )
  if not reads:
    logging.info("data.random_positions_max=%d: a no-op, the model reads no positions", top)


def resolve(cfg):
  """Checks every group before anything is built or compiled; returns the Experiment."""
  if isinstance(cfg, Experiment):
    return cfg
  model = model_spec.resolve(cfg.model)
  data = data_spec.resolve(cfg.data, model.vocab_size)
  train = train_spec.resolve_train(cfg.train)
  opt = train_spec.resolve_opt(cfg.opt, train.steps)
  specs.check(
    data.batch_size % opt.microbatches == 0,
    f"data.batch_size={data.batch_size} is not divisible by opt.microbatches={opt.microbatches}",
  )
  model.check_length(data.seq_len, f"data.seq_len={data.seq_len}")
  _check_random_positions(model, data)
  return Experiment(
    model=model,
    data=data,
    opt=opt,
    train=train,
    mesh=mesh_spec.resolve(cfg.mesh),
    eval=eval_spec.resolve(cfg.eval, data),
    config_json=cfg.to_json(indent=2),
  )
