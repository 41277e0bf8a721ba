"""FIRE (Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long Context
Transformers"): a learned function of the progressively normalized distance as the bias,

  bias_h(i, j) = f_h( psi(i - j) / psi(max(L, i)) ),   psi(x) = log(c * x + 1),

f a small MLP (1 -> model.fire_mlp_width, ReLU, -> one output per head), c > 0 and the
threshold L learned. As in the paper's code, c starts at 0.1 and L = |l| * model.fire_threshold
with l starting at 1; the MLP's input is clamped to [0, 1] at distances the causal mask drops.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from nopejax.model import ops
from nopejax.model.schemes import base


def fire_bias(params, q_pos_BT, k_pos_BS, *, threshold):
  """f(psi(i - j) / psi(max(L, i))) per head: [B, N, T, S] float32."""
  c = jnp.abs(params["c"].astype(jnp.float32))
  big_l = jnp.abs(params["l"].astype(jnp.float32)) * threshold
  psi = lambda x: jnp.log1p(c * x)
  q_pos_BT1 = q_pos_BT.astype(jnp.float32)[:, :, None]
  distance_BTS = jnp.maximum(q_pos_BT1 - k_pos_BS.astype(jnp.float32)[:, None, :], 0.0)
  x_BTS = psi(distance_BTS) / psi(jnp.maximum(big_l, q_pos_BT1))
  x_BTS = jnp.clip(x_BTS, 0.0, 1.0)
  w1_111W, b1_111W, b2_111N = (
    params[n].astype(jnp.float32).reshape(1, 1, 1, -1) for n in ("w1", "b1", "b2")
  )
  hidden_BTSW = nn.relu(x_BTS[..., None] * w1_111W + b1_111W)
  out_BTSN = hidden_BTSW @ params["w2"].astype(jnp.float32) + b2_111N
  return jnp.moveaxis(out_BTSN, -1, 1)


class Fire(base.Scheme):
  def bias_fn(self, module, spec, shared):
    width, heads, dtype = spec.fire_mlp_width, spec.num_heads, spec.param_dtype
    param = functools.partial(ops.param, module, dtype=dtype)
    params = {
      "w1": param("fire_w1", nn.initializers.normal(1.0), (width,), ("fire_mlp",)),
      "b1": param("fire_b1", nn.initializers.zeros, (width,), ("fire_mlp",)),
      "w2": param(
        "fire_w2", nn.initializers.normal(width**-0.5), (width, heads), ("fire_mlp", "heads")
      ),
      "b2": param("fire_b2", nn.initializers.zeros, (heads,), ("heads",)),
      "c": param("fire_c", nn.initializers.constant(0.1), (), ()),
      "l": param("fire_l", nn.initializers.ones, (), ()),
    }
    return base.Bias(functools.partial(fire_bias, threshold=float(spec.fire_threshold)), params)


FIRE = Fire("fire", has_bias=True)
