"""T5's relative bias (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer"): a learned scalar per head and log-spaced distance bucket, causal
(every bucket on the past side). Each t5 layer has its own table, or with `model.t5_shared` all
share one, as T5 and Kazemnejad et al.'s baseline do."""

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


def t5_table(module, spec, name="t5_bias"):
  """The learned [buckets, heads] table, a parameter of `module`."""
  return ops.param(
    module,
    name,
    nn.initializers.normal(0.02),
    (spec.t5_num_buckets, spec.num_heads),
    ("buckets", "heads"),
    spec.param_dtype,
  )


class T5(base.Scheme):
  def bias_fn(self, module, spec, shared):
    # One table per T5 layer, or with model.t5_shared the decoder's one table for all of them
    # (T5's own layout; the decoder owns it so each scanned block stays self-contained).
    table_UN = shared["t5_bias"] if spec.t5_shared else t5_table(module, spec)
    return base.Bias(functools.partial(_t5_bias_of, max_distance=spec.t5_max_distance), table_UN)


def _t5_bias_of(table_UN, q_pos_BT, k_pos_BS, *, max_distance):
  return t5_bias(q_pos_BT, k_pos_BS, table_UN, max_distance=max_distance)


T5_BIAS = T5("t5", has_bias=True)
