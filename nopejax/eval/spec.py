"""The `eval` config group, its validation, and its frozen spec."""

import dataclasses
import math

import ml_collections
from ml_collections import config_dict

from nopejax import specs
from nopejax.data import tokenizers
from nopejax.eval.kinds import KINDS
from nopejax.model.schemes.rope import ROPE_SCALINGS


def eval_config():
  c = ml_collections.ConfigDict()
  c.kinds = "tasks"  # comma list of: tasks, lm, passkey
  c.batch_size = 64  # examples per evaluation batch
  c.max_examples = 200  # per task and length; None or 0: all
  c.lm_lengths = config_dict.placeholder(
    str
  )  # comma list of context lengths; None: 0.5x..8x seq_len
  # Overrides model.rope_scaling at evaluation (none: the model's own); the type's other options
  # come from the model keys, the original length from model.rope_original_len or data.seq_len.
  c.rope_scaling = "none"  # none|linear|ntk|dynamic|yarn|llama3 (schemes/rope.py)
  c.rope_scaling_factor = 1.0  # context extension factor for rope_scaling
  return c


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """The validated `eval` group. Fields keep the config's own values (the evaluation cache keys
  on them); `kind_names` and `lm_lengths_for` give them parsed."""

  kinds: str = "tasks"
  batch_size: int = 64
  max_examples: int | None = 200
  lm_lengths: str | None = None
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0

  @property
  def kind_names(self):
    return [k.strip() for k in str(self.kinds).split(",") if k.strip()]

  @property
  def limit(self):
    """Examples per task and length (None: all)."""
    return self.max_examples or None

  def lm_lengths_for(self, seq_len):
    """Context lengths of the LM evaluation: eval.lm_lengths, else 0.5x to 8x data.seq_len."""
    if self.lm_lengths:
      try:
        lengths = [int(n) for n in str(self.lm_lengths).split(",") if n.strip()]
      except ValueError:
        raise ValueError(
          f"eval.lm_lengths: expected comma-separated integers, got {self.lm_lengths!r}"
        ) from None
    else:
      lengths = [seq_len // 2] + [seq_len * k for k in (1, 2, 4, 8)]
    specs.check(
      lengths and min(lengths) >= 2, f"eval.lm_lengths: need lengths of at least 2, got {lengths}"
    )
    return sorted(set(lengths))


def resolve(group, data) -> EvalSpec:
  """Validates the `eval` group against the run's DataSpec `data`."""
  e = specs.from_group(EvalSpec, group)
  names = e.kind_names
  specs.check(names, f"eval.kinds: none given; known: {', '.join(KINDS)}")
  for name in names:
    specs.check(name in KINDS, f"eval.kinds: unknown kind {name!r}; known: {', '.join(KINDS)}")
  text = [n for n in names if KINDS[n].reads_text]
  specs.check(
    not text or tokenizers.resolve(data) != "task",
    f"eval.kinds: {' and '.join(text)} read text, which the task-word tokenizer cannot "
    "encode; use a text config (data.tokenizer=byte or another)",
  )
  specs.choice(e.rope_scaling, ROPE_SCALINGS, "eval.rope_scaling")
  factor = e.rope_scaling_factor
  specs.check(
    isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1,
    f"eval.rope_scaling_factor: expected a number >= 1, got {factor!r}",
  )
  specs.positive(e.batch_size, "eval.batch_size")
  e.lm_lengths_for(data.seq_len)
  return e
