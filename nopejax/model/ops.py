"""The few building blocks every model module uses: named parameters, fan-in init, 2-D dots."""

import math

import flax.linen as nn
import jax.numpy as jnp


def param(module, name, init, shape, axes, dtype):
  """A parameter of `module` carrying its logical axis names (the mesh rules place them)."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def fan_in(*axes):
  return nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=axes, out_axis=()
  )


def dense(x, w, contract=1):
  """Contracts the last `contract` dims of x with the first of w, as one 2-D [rows, k] @ [k, n] dot.

  Same math as the einsum, but XLA's CPU dots want 2-D row-major operands: with a [B, T, ...]
  activation the weight gradient contracts over two dims and XLA transposes the activation's
  cotangent to get there (in the SwiGLU backward, a fifth of a CPU step at bench_cpu shapes).
  Flattened, the backward needs no activation transposes; TPU and GPU compile both alike.
  """
  k = w.shape[:contract]
  rows_K = x.reshape(-1, math.prod(k))
  y = rows_K @ w.reshape(math.prod(k), -1)
  return y.reshape(x.shape[: x.ndim - contract] + w.shape[contract:])


def lookup(table, ids):
  """Rows of `table`; ids outside [0, rows) give NaN rows (jnp.take would wrap negative ids)."""
  return (
    jnp.asarray(table).at[ids].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)
  )
