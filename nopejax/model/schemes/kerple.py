"""KERPLE (Chi et al. 2022, "KERPLE: Kernelized Relative Positional Embedding for Length
Extrapolation"): a conditionally positive definite kernel of the distance as the bias, with
two learned parameters per head.

  kerple_log:    -r1 * log(1 + r2 * |i - j|)
  kerple_power:  -r1 * |i - j| ** r2,   r2 in (0, 2]

As the paper's code does, r1 and r2 are stored as they are (initialized uniformly in (0, 2) and
(0, 1)) and clamped at use: r1, r2 >= 0.01, and r2 <= 2 for the power kernel.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from nopejax.model import ops
from nopejax.model.schemes import base

EPS = 1e-2


def _uniform(high):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, 0.0, high)


def kerple_bias(params, q_pos_BT, k_pos_BS, *, kind):
  """The kernel of |q pos - k pos| per head: [B, N, T, S] float32."""
  r1_N = jnp.maximum(params["r1"].astype(jnp.float32), EPS)
  r2_N = jnp.maximum(params["r2"].astype(jnp.float32), EPS)
  distance_B1TS = jnp.abs(q_pos_BT[:, :, None] - k_pos_BS[:, None, :]).astype(jnp.float32)[:, None]
  r1, r2 = r1_N[None, :, None, None], r2_N[None, :, None, None]
  if kind == "log":
    return -r1 * jnp.log1p(r2 * distance_B1TS)
  return -r1 * distance_B1TS ** jnp.minimum(r2, 2.0)


@dataclasses.dataclass(frozen=True)
class Kerple(base.Scheme):
  kind: str = "log"

  def bias_fn(self, module, spec, shared):
    params = {
      name: ops.param(
        module, f"kerple_{name}", _uniform(high), (spec.num_heads,), ("heads",), spec.param_dtype
      )
      for name, high in (("r1", 2.0), ("r2", 1.0))
    }
    return base.Bias(functools.partial(kerple_bias, kind=self.kind), params)


KERPLE_LOG = Kerple("kerple_log", has_bias=True, kind="log")
KERPLE_POWER = Kerple("kerple_power", has_bias=True, kind="power")
