"""RoPE (Su et al. 2021): queries and keys rotated by their positions, on the first
`model.rope_fraction` of each head's dims, with the context extensions evaluation can apply
(`eval.rope_scaling`: linear, NTK-aware, YaRN)."""

import math

import jax.numpy as jnp
import numpy as np

from nopejax.model.schemes import base

ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")


def rope_frequencies(rotary_dim, theta, scaling="none", factor=1.0, original_len=0):
  """Inverse frequencies [rotary_dim / 2] and a factor on cos/sin, for a context `factor` longer.

  linear: positions divided by factor (Chen et al.'s position interpolation). ntk: theta times
  factor^(d/(d-2)) ("NTK-aware"). yarn (Peng et al., as transformers computes it): dims turning
  more than 32 times over `original_len` tokens keep their frequency, fewer than once are
  interpolated, a linear ramp between; cos and sin are scaled by 0.1 ln(factor) + 1.
  """
  if scaling not in ROPE_SCALINGS:
    raise ValueError(f"rope scaling: unknown {scaling!r}; known: {', '.join(ROPE_SCALINGS)}")
  half = rotary_dim // 2
  exponent_R = np.arange(half, dtype=np.float64) * 2 / rotary_dim
  if scaling == "ntk":
    theta = theta * factor ** (rotary_dim / (rotary_dim - 2))
  inv_freq_R = 1.0 / theta**exponent_R
  attn_factor = 1.0
  if scaling == "linear":
    inv_freq_R = inv_freq_R / factor
  elif scaling == "yarn":

    def dim_turning(rotations):
      return rotary_dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(dim_turning(32)), 0)
    high = min(math.ceil(dim_turning(1)), rotary_dim - 1)
    ramp_R = np.clip((np.arange(half) - low) / max(high - low, 1e-3), 0, 1)
    inv_freq_R = inv_freq_R / factor * ramp_R + inv_freq_R * (1 - ramp_R)
    attn_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
  return inv_freq_R.astype(np.float32), attn_factor


def rotate(x_BTNH, angle_BTR, rotary_dim, scale_BT1R=1.0):
  """Rotates the first `rotary_dim` dims of each head by `angle_BTR` (rotate-half layout, as in
  Llama/HF), the rotated pairs multiplied by `scale_BT1R` (YaRN's factor, xPos's decay)."""
  half = rotary_dim // 2
  cos_BT1R = jnp.cos(angle_BTR)[:, :, None, :] * scale_BT1R
  sin_BT1R = jnp.sin(angle_BTR)[:, :, None, :] * scale_BT1R
  x1 = x_BTNH[..., :half].astype(jnp.float32)
  x2 = x_BTNH[..., half:rotary_dim].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos_BT1R - x2 * sin_BT1R, x2 * cos_BT1R + x1 * sin_BT1R], axis=-1)
  return jnp.concatenate([rotated.astype(x_BTNH.dtype), x_BTNH[..., rotary_dim:]], axis=-1)


def angles(positions_BT, inv_freq_R):
  """Rotation angles [B, T, R] in float32."""
  return positions_BT.astype(jnp.float32)[..., None] * inv_freq_R[None, None]


def rope(x_BTNH, positions_BT, *, theta, rotary_dim, scaling="none", factor=1.0, original_len=0):
  """Rotates the first `rotary_dim` dims of each head by RoPE's angles at `positions_BT`."""
  inv_freq_R, attn_factor = rope_frequencies(rotary_dim, theta, scaling, factor, original_len)
  return rotate(x_BTNH, angles(positions_BT, inv_freq_R), rotary_dim, attn_factor)


class RoPE(base.Scheme):
  def queries_keys(self, module, spec, q_BTNH, k_BSKH, keys):
    del module
    kw = dict(
      theta=spec.rope_theta,
      rotary_dim=spec.rope_dim,
      scaling=spec.rope_scaling,
      factor=spec.rope_scaling_factor,
      original_len=spec.rope_original_len,
    )
    return rope(q_BTNH, keys.q_pos_BT, **kw), rope(k_BSKH, keys.k_pos_BS, **kw)


ROPE = RoPE("rope", rotary=True)
