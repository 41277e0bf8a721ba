"""T5's relative bias (Raffel et al. 2020): a learned scalar per head and log-spaced distance
bucket, causal (every bucket on the past side)."""

import functools
import math

import flax.linen as nn
import jax.numpy as jnp

from nopejax.model import ops
from nopejax.model.schemes import base


def t5_bucket(distance, *, num_buckets, max_distance):
  """Causal T5 bucket of `distance` = query pos - key pos (>= 0 where attention is allowed).

  Half the buckets are exact distances, the rest grow logarithmically up to max_distance.
  """
  n = jnp.maximum(distance, 0)
  max_exact = num_buckets // 2
  scaled = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
    max_distance / max_exact
  )
  large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return jnp.where(n < max_exact, n, large)


def t5_bias(q_pos_BT, k_pos_BS, table_UN, *, max_distance):
  """Learned bias per bucket and head, looked up by distance: [B, N, T, S] float32."""
  num_buckets = table_UN.shape[0]
  distance_BTS = q_pos_BT[:, :, None] - k_pos_BS[:, None, :]
  bucket_BTS = t5_bucket(distance_BTS, num_buckets=num_buckets, max_distance=max_distance)
  return jnp.moveaxis(table_UN.astype(jnp.float32)[bucket_BTS], -1, 1)


class T5(base.Scheme):
  def bias_fn(self, module, spec):
    # One table per T5 layer: with per-layer schemes there is no "first layer" to own a shared
    # table, and each block stays self-contained under the scan.
    table_UN = ops.param(
      module,
      "t5_bias",
      nn.initializers.normal(0.02),
      (spec.t5_num_buckets, spec.num_heads),
      ("buckets", "heads"),
      spec.param_dtype,
    )
    return base.Bias(functools.partial(_t5_bias_of, max_distance=spec.t5_max_distance), table_UN)


def _t5_bias_of(table_UN, q_pos_BT, k_pos_BS, *, max_distance):
  return t5_bias(q_pos_BT, k_pos_BS, table_UN, max_distance=max_distance)


T5_BIAS = T5("t5", has_bias=True)
