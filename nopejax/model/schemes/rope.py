"""RoPE (Su et al. 2021): queries and keys rotated by their positions, on the first
`model.rope_fraction` of each head's dims, with the context extensions of transformers'
modeling_rope_utils.py (`model.rope_scaling`; `eval.rope_scaling` overrides it at evaluation).

Scaling applies to RoPE layers with full or chunked windows only: sliding-window RoPE layers
never see a distance beyond their window, so they keep their frequencies (as SmolLM3 and OLMo 3
extend context). NoPE layers have nothing to scale; p-RoPE and xPos layers do not scale.
"""

import math

import jax.numpy as jnp
import numpy as np

from nopejax.model.schemes import base

ROPE_SCALINGS = ("none", "linear", "ntk", "dynamic", "yarn", "llama3")
# The types that measure the extension from the pretraining context (model.rope_original_len).
NEEDS_ORIGINAL_LEN = ("dynamic", "yarn", "llama3")


def _mscale(factor, mscale=1.0):
  """YaRN's attention factor 0.1 mscale ln(factor) + 1 (transformers' get_mscale)."""
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(
  rotary_dim,
  theta,
  scaling="none",
  factor=1.0,
  original_len=0,
  *,
  seq_len=None,
  low_freq_factor=1.0,
  high_freq_factor=4.0,
  beta_fast=32.0,
  beta_slow=1.0,
  mscale=0.0,
  mscale_all_dim=0.0,
  attention_factor=None,
  truncate=True,
):
  """Inverse frequencies [rotary_dim / 2] and a factor on cos/sin, for a context `factor` longer
  than `original_len`: each type as transformers 5.x computes it (modeling_rope_utils.py), but
  ntk, which transformers has only as dynamic.

  linear: frequencies divided by factor (Chen et al. 2023, position interpolation). ntk: theta
  times factor^(d/(d-2)) ("NTK-aware", bloc97). dynamic (emozilla's dynamic NTK): theta times
  (factor L / original_len - (factor - 1))^(d/(d-2)) where L = max(seq_len, original_len), and
  seq_len (traced: the call's largest position + 1) extends nothing up to original_len. yarn
  (Peng et al. 2023): dims turning more than beta_fast times over `original_len` tokens keep
  their frequency, fewer than beta_slow are divided by factor, a linear ramp between (its ends
  rounded to whole dims when `truncate`); cos and sin are scaled by `attention_factor`, else
  mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are set (DeepSeek), else
  0.1 ln(factor) + 1. llama3 (Llama 3.1): wavelengths above original_len / low_freq_factor are
  divided by factor, below original_len / high_freq_factor kept, and those between interpolated
  smoothly.
  """
  if scaling not in ROPE_SCALINGS:
    raise ValueError(f"rope scaling: unknown {scaling!r}; known: {', '.join(ROPE_SCALINGS)}")
  if scaling in ("ntk", "dynamic") and rotary_dim <= 2:
    raise ValueError(
      f"model.rope_scaling={scaling}: needs more than 2 rotated dims, got {rotary_dim}"
    )
  half = rotary_dim // 2
  exponent_R = np.arange(half, dtype=np.float64) * 2 / rotary_dim
  if scaling == "dynamic" and seq_len is not None:
    # Traced: the base follows the call's length, in float32 as transformers computes it.
    length = jnp.maximum(seq_len, original_len).astype(jnp.float32)
    dynamic_theta = theta * (factor * length / original_len - (factor - 1)) ** (
      rotary_dim / (rotary_dim - 2)
    )
    return 1.0 / dynamic_theta ** jnp.asarray(exponent_R, jnp.float32), 1.0
  if scaling == "ntk":
    theta = theta * factor ** (rotary_dim / (rotary_dim - 2))
  inv_freq_R = 1.0 / theta**exponent_R
  attn_factor = 1.0
  if scaling == "linear":
    inv_freq_R = inv_freq_R / factor
  elif scaling == "yarn":

    def dim_turning(rotations):
      return rotary_dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_turning(beta_fast), dim_turning(beta_slow)
    if truncate:
      low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
      high += 0.001  # transformers' guard against a zero-width ramp
    ramp_R = np.clip((np.arange(half) - low) / (high - low), 0, 1)
    inv_freq_R = inv_freq_R / factor * ramp_R + inv_freq_R * (1 - ramp_R)
    if attention_factor is not None:
      attn_factor = float(attention_factor)
    elif mscale and mscale_all_dim:
      attn_factor = _mscale(factor, mscale) / _mscale(factor, mscale_all_dim)
    else:
      attn_factor = _mscale(factor)
  elif scaling == "llama3":
    wavelen_R = 2 * math.pi / inv_freq_R
    smooth_R = (original_len / wavelen_R - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_R = (1 - smooth_R) * inv_freq_R / factor + smooth_R * inv_freq_R
    inv_freq_R = np.where(
      wavelen_R < original_len / high_freq_factor,
      inv_freq_R,
      np.where(wavelen_R > original_len / low_freq_factor, inv_freq_R / factor, smoothed_R),
    )
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


def rope(
  x_BTNH,
  positions_BT,
  *,
  theta,
  rotary_dim,
  scaling="none",
  factor=1.0,
  original_len=0,
  **options,
):
  """Rotates the first `rotary_dim` dims of each head by RoPE's angles at `positions_BT`;
  `options` are rope_frequencies' (dynamic's length is that of `positions_BT`)."""
  if scaling == "dynamic":
    options.setdefault("seq_len", jnp.max(positions_BT) + 1)
  inv_freq_R, attn_factor = rope_frequencies(
    rotary_dim, theta, scaling, factor, original_len, **options
  )
  return rotate(x_BTNH, angles(positions_BT, inv_freq_R), rotary_dim, attn_factor)


def scaling_options(spec):
  """rope_frequencies' scaling arguments from a ModelSpec."""
  return dict(
    scaling=spec.rope_scaling,
    factor=spec.rope_scaling_factor,
    original_len=spec.rope_original_len,
    low_freq_factor=spec.rope_low_freq_factor,
    high_freq_factor=spec.rope_high_freq_factor,
    beta_fast=spec.yarn_beta_fast,
    beta_slow=spec.yarn_beta_slow,
    mscale=spec.yarn_mscale,
    mscale_all_dim=spec.yarn_mscale_all_dim,
    attention_factor=spec.yarn_attention_factor,
    truncate=spec.yarn_truncate,
  )


class RoPE(base.Scheme):
  def queries_keys(self, module, spec, q_BTNH, k_BSKH, keys):
    del module
    options = scaling_options(spec) if keys.window.kind != "sliding" else {}
    if options.get("scaling") == "dynamic":
      # As transformers' dynamic_rope_update: the length is this call's (one decoding step's
      # keys are rotated once, at their own length, before the cache stores them).
      options["seq_len"] = jnp.max(keys.q_pos_BT) + 1
    kw = dict(theta=spec.rope_theta, rotary_dim=spec.rope_dim, **options)
    return rope(q_BTNH, keys.q_pos_BT, **kw), rope(k_BSKH, keys.k_pos_BS, **kw)


ROPE = RoPE("rope", rotary=True)
