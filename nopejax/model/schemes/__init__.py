"""The positional schemes a layer token can name, one module per family.

To add one: a module here defining a `base.Scheme` subclass (its formula and paper in the
docstring) and one entry below. Nothing else changes: layer patterns validate against this
table, and attention calls the scheme's hooks.
"""

from nopejax.model.schemes import alibi, cope, fire, kerple, nope, prope, rope, t5, xpos
from nopejax.model.schemes.base import Scheme

SCHEMES = {
  s.name: s
  for s in (
    nope.NOPE,
    rope.ROPE,
    alibi.ALIBI,
    t5.T5_BIAS,
    fire.FIRE,
    kerple.KERPLE_LOG,
    kerple.KERPLE_POWER,
    xpos.XPOS,
    cope.COPE,
    prope.PROPE,
  )
}

__all__ = ["SCHEMES", "Scheme"]
