"""ALiBi (Press et al. 2022, "Train Short, Test Long"): a bias of -slope_h * distance, one fixed
slope per head, no parameters."""

import functools
import math

import jax.numpy as jnp
import numpy as np

from nopejax.model.schemes import base


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


class ALiBi(base.Scheme):
  def bias_fn(self, module, spec, shared):
    del module
    return base.Bias(functools.partial(_no_params, num_heads=spec.num_heads))


def _no_params(params, q_pos_BT, k_pos_BS, *, num_heads):
  del params
  return alibi_bias(q_pos_BT, k_pos_BS, num_heads)


ALIBI = ALiBi("alibi", has_bias=True)
