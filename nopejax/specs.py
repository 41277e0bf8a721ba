"""What every config group's validation shares: a frozen spec built from a ConfigDict group, and
checks whose one-line errors name the key and what it allows.

Each package owns its group (`model/spec.py`, `data/spec.py`, `train/spec.py`,
`parallel/spec.py`, `eval/spec.py`): the defaults, a frozen dataclass with the same field names,
and a `resolve(group)` that validates it. `experiment.resolve` runs them all once, at start.
"""

import dataclasses
import math


def check(ok, message):
  if not ok:
    raise ValueError(message)


def positive(value, key, kind=int):
  """`value` as a positive int (or float), else a ValueError naming `key`."""
  ok = (
    not isinstance(value, bool)
    and isinstance(value, (int, float))
    and math.isfinite(value)
    and value > 0
    and (kind is not int or float(value).is_integer())
  )
  check(ok, f"{key}: expected a positive {'integer' if kind is int else 'number'}, got {value!r}")
  return kind(value)


def choice(value, allowed, key):
  check(value in allowed, f"{key}: unknown value {value!r}; allowed: {', '.join(allowed)}")
  return value


def _frozen(value):
  """Lists (from ConfigDicts and JSON) become tuples, so specs stay hashable."""
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


def from_group(cls, group, **resolved):
  """A `cls` spec from the ConfigDict (or dict) `group`: same field names, lists as tuples.

  Keys the group lacks (a config.json written before the key existed) take the field's default;
  `resolved` fields are given by the caller and not read from the group.
  """
  values = {}
  for field in dataclasses.fields(cls):
    if field.name in resolved:
      values[field.name] = resolved[field.name]
    elif field.name in group:
      values[field.name] = _frozen(group[field.name])
  return cls(**values)
