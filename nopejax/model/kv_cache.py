"""The per-layer key/value cache of decoding: slots, masks and updates as pure functions.

A layer's cache holds `slots(layer, cache_len)` entries: every token for a full layer, a ring of
W slots for a sliding or chunked layer (token index i lives in slot i % W; for a chunked layer
the W slots always hold the current chunk, since a chunk is W consecutive tokens). Besides keys
and values (already rotated when the layer is RoPE) each slot keeps its token's sequence index,
position and segment id, so the ordinary `attention.mask` (causality by index, documents by
segment, windows by position) decides what a query sees, and ALiBi/T5 biases are computed from
the stored absolute positions. Empty slots hold index INT32_MAX: causality masks them.

Rows share sequence indices (batches are left-padded, see decode.py), so the index is one [S]
vector while positions and segments are per row.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

EMPTY = np.iinfo(np.int32).max


def slots(layer, cache_len):
  """Cache entries a layer needs to decode up to `cache_len` tokens."""
  if layer.window == "full":
    return cache_len
  return min(layer.window_size, cache_len)


def empty(batch, num_slots, kv_heads, head_dim, dtype):
  return {
    "k": jnp.zeros((batch, num_slots, kv_heads, head_dim), dtype),
    "v": jnp.zeros((batch, num_slots, kv_heads, head_dim), dtype),
    "idx": jnp.full((num_slots,), EMPTY, jnp.int32),
    "pos": jnp.zeros((batch, num_slots), jnp.int32),
    "seg": jnp.zeros((batch, num_slots), jnp.int32),
  }


def attend_and_store(cache, k_BTKH, v_BTKH, keys, *, fresh):
  """(keys and values to attend to, their Keys, the updated cache) for this call's T tokens.

  A fresh cache (prefill) attends to the new tokens alone, the ordinary forward pass; otherwise
  the new tokens attend to the cache as it was plus themselves. A slot about to be overwritten
  holds a token W or more indices back, which the window masks anyway. Then the last
  min(T, slots) tokens are written to their slots.
  """
  if fresh:
    k_all, v_all = k_BTKH, v_BTKH
  else:
    k_all = jnp.concatenate([cache["k"], k_BTKH.astype(cache["k"].dtype)], axis=1)
    v_all = jnp.concatenate([cache["v"], v_BTKH.astype(cache["v"].dtype)], axis=1)
    keys = dataclasses.replace(
      keys,
      k_idx_S=jnp.concatenate([cache["idx"], keys.q_idx_T]),
      k_pos_BS=jnp.concatenate([cache["pos"], keys.q_pos_BT], axis=1),
      k_seg_BS=jnp.concatenate([cache["seg"], keys.q_seg_BT], axis=1),
    )
  num_slots = cache["idx"].shape[0]
  n = min(k_BTKH.shape[1], num_slots)
  slot_n = keys.q_idx_T[-n:] % num_slots
  stored = {
    "k": cache["k"].at[:, slot_n].set(k_BTKH[:, -n:].astype(cache["k"].dtype)),
    "v": cache["v"].at[:, slot_n].set(v_BTKH[:, -n:].astype(cache["v"].dtype)),
    "idx": cache["idx"].at[slot_n].set(keys.q_idx_T[-n:]),
    "pos": cache["pos"].at[:, slot_n].set(keys.q_pos_BT[:, -n:]),
    "seg": cache["seg"].at[:, slot_n].set(keys.q_seg_BT[:, -n:]),
  }
  return k_all, v_all, keys, stored
