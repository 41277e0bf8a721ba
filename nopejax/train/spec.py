"""The `opt` and `train` config groups, their validation, and their frozen specs."""

import dataclasses

import ml_collections

from nopejax import specs

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
  c.compilation_cache_dir = ""  # compiled steps kept for restarts; "" = ~/.cache/nopejax, "off"
  # (first step, count): a jax.profiler trace of those steps into WORKDIR/tensorboard (the
  # profile plugin's plugins/profile/, and a Perfetto trace); count 0 = no profile
  c.profile_steps = (0, 0)
  return c


@dataclasses.dataclass(frozen=True)
class OptSpec:
  """The validated `opt` group (fields as in opt_config)."""

  lr: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 100
  decay_fraction: float = 0.1
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float = 1.0
  z_loss: float = 0.0
  microbatches: int = 1


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """The validated `train` group (fields as in train_config)."""

  steps: int = 1000
  seed: int = 0
  log_every: int = 50
  eval_every: int = 500
  eval_batches: int = 8
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  max_bad_steps: int = 10
  init_from: str = ""
  progress: bool = True
  export_params: bool = True
  compilation_cache_dir: str = ""
  profile_steps: tuple = (0, 0)


def resolve_train(group) -> TrainSpec:
  for key in ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_bad_steps"):
    specs.positive(group[key], f"train.{key}")
  t = specs.from_group(TrainSpec, group)
  profile = t.profile_steps
  specs.check(
    isinstance(profile, tuple)
    and len(profile) == 2
    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in profile)
    and (profile[1] == 0 or profile[0] >= 1),
    "train.profile_steps: expected (first step, count) with first >= 1 (count 0 = no "
    f"profile), got {profile!r}",
  )
  return t


def resolve_opt(group, steps: int) -> OptSpec:
  """Validates the `opt` group for a run of `steps` optimizer steps."""
  o = specs.from_group(OptSpec, group)
  specs.positive(o.lr, "opt.lr", float)
  specs.positive(o.microbatches, "opt.microbatches")
  specs.check(o.lr <= 1.0, f"opt.lr: {o.lr} is out of range; expected a value in (0, 1]")
  specs.choice(o.schedule, SCHEDULES, "opt.schedule")
  specs.check(
    0 <= o.warmup_steps <= steps,
    f"opt.warmup_steps: expected 0..train.steps={steps}, got {o.warmup_steps}",
  )
  specs.check(
    0 <= o.decay_fraction <= 1,
    f"opt.decay_fraction: expected a value in [0, 1], got {o.decay_fraction}",
  )
  return o
