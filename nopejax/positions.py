"""Positional encodings as small pure functions of positions (and q/k for RoPE).

Letter legend (used in every module): B batch, T query length, S key length, D model width,
N query heads, K key/value heads, G query heads per kv head, H head dim, F MLP width, V vocab.
"""

import math

import jax.numpy as jnp
import numpy as np


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
  inv_freq_R = 1.0 / theta ** exponent_R
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


def rope(x_BTNH, positions_BT, *, theta, rotary_dim, scaling="none", factor=1.0,
         original_len=0):
  """Rotates the first `rotary_dim` dims of each head (rotate-half layout, as in Llama/HF)."""
  half = rotary_dim // 2
  inv_freq_R, attn_factor = rope_frequencies(rotary_dim, theta, scaling, factor, original_len)
  angle_BTR = positions_BT.astype(jnp.float32)[..., None] * inv_freq_R[None, None]
  cos_BT1R = jnp.cos(angle_BTR)[:, :, None, :] * attn_factor
  sin_BT1R = jnp.sin(angle_BTR)[:, :, None, :] * attn_factor
  x1 = x_BTNH[..., :half].astype(jnp.float32)
  x2 = x_BTNH[..., half:rotary_dim].astype(jnp.float32)
  rotated = jnp.concatenate(
      [x1 * cos_BT1R - x2 * sin_BT1R, x2 * cos_BT1R + x1 * sin_BT1R], axis=-1)
  return jnp.concatenate([rotated.astype(x_BTNH.dtype), x_BTNH[..., rotary_dim:]], axis=-1)


def alibi_slopes(num_heads):
  """Press et al.'s head slopes: a geometric sequence, interleaved when N is no power of two."""
  def power_of_two(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]
  closest = 2 ** math.floor(math.log2(num_heads))
  slopes = power_of_two(closest)
  if closest < num_heads:
    slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
  return np.asarray(slopes, np.float32)


def alibi_bias(q_pos_BT, k_pos_BS, num_heads):
  """-slope * distance to every earlier key: [B, N, T, S] float32."""
  distance_BTS = (q_pos_BT[:, :, None] - k_pos_BS[:, None, :]).astype(jnp.float32)
  slopes_N = jnp.asarray(alibi_slopes(num_heads))
  return -slopes_N[None, :, None, None] * jnp.abs(distance_BTS)[:, None]


def t5_bucket(distance, *, num_buckets, max_distance):
  """Causal T5 bucket of `distance` = query pos - key pos (>= 0 where attention is allowed).

  Half the buckets are exact distances, the rest grow logarithmically up to max_distance.
  """
  n = jnp.maximum(distance, 0)
  max_exact = num_buckets // 2
  scaled = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
      max_distance / max_exact)
  large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return jnp.where(n < max_exact, n, large)


def t5_bias(q_pos_BT, k_pos_BS, table_UN, *, max_distance):
  """Learned bias per bucket and head, looked up by distance: [B, N, T, S] float32."""
  num_buckets = table_UN.shape[0]
  distance_BTS = q_pos_BT[:, :, None] - k_pos_BS[:, None, :]
  bucket_BTS = t5_bucket(distance_BTS, num_buckets=num_buckets, max_distance=max_distance)
  return jnp.moveaxis(table_UN.astype(jnp.float32)[bucket_BTS], -1, 1)


def sinusoidal(positions_BT, dim):
  """Vaswani et al.'s absolute embedding: [sin | cos] of pos / 10000^(2i/dim), [B, T, dim]."""
  half = dim // 2
  inv_freq = 1.0 / 10000.0 ** (np.arange(half, dtype=np.float32) / half)
  angle_BTR = positions_BT.astype(jnp.float32)[..., None] * inv_freq[None, None]
  emb = jnp.concatenate([jnp.sin(angle_BTR), jnp.cos(angle_BTR)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, 0), (0, dim - 2 * half)))


def query_temperature(positions_BT, *, floor_scale, attn_scale):
  """Llama 4's NoPE query scale: log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1."""
  pos = positions_BT.astype(jnp.float32)
  return jnp.log(jnp.floor((pos + 1.0) / floor_scale) + 1.0) * attn_scale + 1.0
