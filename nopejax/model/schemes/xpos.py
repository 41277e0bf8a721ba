"""xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer"): RoPE whose rotated pairs decay
with distance. Pair i of a query at position m is scaled by zeta_i^(m / gamma) and of a key at n
by zeta_i^(-n / gamma), so their product carries zeta_i^((m - n) / gamma) <= 1 on causal pairs:

  zeta_i = (2i + 0.4 d) / (1.4 d),   gamma = model.xpos_scale_base (512),

d the rotated dims (`model.rope_fraction` of the head), as in torchscale's implementation.

The scales are taken at absolute positions (keys are scaled once, so the KV cache stores them as
they are), which bounds the positions a dtype can hold: zeta_0^(-n / gamma) overflows float32 and
bfloat16 beyond n of about 36k at gamma 512, float16 beyond 4.5k. `max_position` says where, with
room for keys of norm 2^8 (34k at gamma 512 in float32); `ModelSpec.check_length` refuses longer
sequences with one line, and a larger `model.xpos_scale_base` reaches further.
"""

import math

import jax.numpy as jnp
import numpy as np

from nopejax.model.schemes import base, rope


def xpos_zeta(rotary_dim):
  """zeta_i per rotated pair [rotary_dim / 2], in (0.29, 1)."""
  return ((np.arange(0, rotary_dim, 2) + 0.4 * rotary_dim) / (1.4 * rotary_dim)).astype(np.float32)


def max_position(rotary_dim, scale_base, dtype):
  """The largest position whose key scale zeta_0^(-n / gamma) leaves room in `dtype` for keys
  of norm up to 2^8 (the rotated pair is a difference of two scaled products)."""
  room = math.log(float(jnp.finfo(dtype).max)) - 8 * math.log(2)
  return int(room * scale_base / -math.log(xpos_zeta(rotary_dim)[0]))


def xpos(x_BTNH, positions_BT, *, theta, rotary_dim, scale_base, sign):
  """Rotates as RoPE and scales pair i by zeta_i^(sign * pos / gamma): sign +1 queries, -1 keys."""
  inv_freq_R, _ = rope.rope_frequencies(rotary_dim, theta)
  angle_BTR = rope.angles(positions_BT, inv_freq_R)
  exponent_BTR = sign * positions_BT.astype(jnp.float32)[..., None] / scale_base
  scale_BT1R = jnp.power(xpos_zeta(rotary_dim)[None, None], exponent_BTR)[:, :, None, :]
  return rope.rotate(x_BTNH, angle_BTR, rotary_dim, scale_BT1R)


class XPos(base.Scheme):
  def queries_keys(self, module, spec, q_BTNH, k_BSKH, keys):
    del module
    kw = dict(theta=spec.rope_theta, rotary_dim=spec.rope_dim, scale_base=spec.xpos_scale_base)
    return xpos(q_BTNH, keys.q_pos_BT, sign=1.0, **kw), xpos(k_BSKH, keys.k_pos_BS, sign=-1.0, **kw)


XPOS = XPos("xpos", rotary=True)
