"""Query scalings per layer (`model.query_scaling`, tiled over the layers like `model.windows`):
a factor on each query before the softmax scale, in any scheme's layer.

  none       1
  llama4     Llama 4's temperature of its global NoPE layers (`model.query_temperature`, or the
             llama4 preset): log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1.
  ssmax      Scalable softmax (Nakanishi 2025, "Scalable-Softmax Is Superior for Attention"):
             s_h * log(n), s learned per head (from `model.ssmax_init`), n the number of keys the
             query attends to: pos + 1, capped by a sliding window, pos mod W + 1 in a chunked
             one. Counted from positions, so with randomized training positions n is the
             randomized span, and in a packed row each document counts its own keys.
  headscale  A learned scale per head, from 1 (Wang et al. 2024, "Length Generalization of
             Causal Transformers without Position Encoding": NoPE's attention spreads out beyond
             the training length, and a temperature per head brings it back).
"""

import flax.linen as nn
import jax.numpy as jnp

from nopejax.model import ops


def query_temperature(positions_BT, *, floor_scale, attn_scale):
  """Llama 4's NoPE query scale: log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1."""
  pos = positions_BT.astype(jnp.float32)
  return jnp.log(jnp.floor((pos + 1.0) / floor_scale) + 1.0) * attn_scale + 1.0


def attended_keys(positions_BT, window):
  """How many keys a query at each position attends to (itself included), float32 [B, T]."""
  pos = positions_BT.astype(jnp.float32)
  if window.kind == "sliding":
    return jnp.minimum(pos + 1.0, window.size)
  if window.kind == "chunked":
    return jnp.mod(pos, window.size) + 1.0
  return pos + 1.0


def scale_queries(module, spec, kind, q_BTNH, keys):
  """Queries times the layer's query scaling; `module` owns the learned scales."""
  if kind == "none":
    return q_BTNH
  if kind == "llama4":
    scale_BTN = query_temperature(
      keys.q_pos_BT,
      floor_scale=spec.temperature_floor_scale,
      attn_scale=spec.temperature_attn_scale,
    )[:, :, None]
  else:
    init = nn.initializers.constant(spec.ssmax_init if kind == "ssmax" else 1.0)
    name = "ssmax_s" if kind == "ssmax" else "head_scale"
    scale_N = ops.param(module, name, init, (spec.num_heads,), ("heads",), spec.param_dtype)
    scale_BTN = scale_N.astype(jnp.float32)[None, None]
    if kind == "ssmax":
      scale_BTN = scale_BTN * jnp.log(attended_keys(keys.q_pos_BT, keys.window))[:, :, None]
  return (q_BTNH.astype(jnp.float32) * scale_BTN[..., None]).astype(q_BTNH.dtype)
