"""Absolute input positions (`model.input_positions`), added to the token embeddings once: not a
layer token. `learned` is a table in the decoder; `sinusoidal` is Vaswani et al.'s."""

import jax.numpy as jnp
import numpy as np


def sinusoidal(positions_BT, dim):
  """Vaswani et al.'s absolute embedding: [sin | cos] of pos / 10000^(2i/dim), [B, T, dim]."""
  half = dim // 2
  inv_freq = 1.0 / 10000.0 ** (np.arange(half, dtype=np.float32) / half)
  angle_BTR = positions_BT.astype(jnp.float32)[..., None] * inv_freq[None, None]
  emb = jnp.concatenate([jnp.sin(angle_BTR), jnp.cos(angle_BTR)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, 0), (0, dim - 2 * half)))
