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

import jax
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
    "k": jnp.zeros((batch, kv_heads, num_slots, head_dim), dtype),
    "v": jnp.zeros((batch, kv_heads, num_slots, head_dim), dtype),
    "idx": jnp.full((num_slots,), EMPTY, jnp.int32),
    "pos": jnp.zeros((batch, num_slots), jnp.int32),
    "seg": jnp.zeros((batch, num_slots), jnp.int32),
  }


SLOT_AXIS = {"k": 2, "v": 2, "idx": 0, "pos": 1, "seg": 1}


def _write(name, array, x, start, repeat):
  """`x` written into the cache's `name` array from slot `start` on (into layer `repeat` of a
  stacked cache)."""
  at = [jnp.int32(0)] * array.ndim
  if repeat is not None:
    at[0], x = repeat, x[None]
  at[SLOT_AXIS[name] + (repeat is not None)] = start
  return jax.lax.dynamic_update_slice(array, x, at)


def _heads_last(x_BKSH):
  """The attention paths' [B, S, K, H] view of a cache array. The cache keeps heads before
  slots, the layout the decoding step's dots read without a transpose of the whole cache."""
  return jnp.swapaxes(x_BKSH, 1, 2)


def attend_and_store(cache, k_BTKH, v_BTKH, keys, *, fresh, ring, repeat=None):
  """(keys and values to attend to, their Keys, store) for this call's T tokens, where
  `store(after)` is the updated cache, given a scalar of the attention output (`after`).

  A fresh cache (prefill) attends to the new tokens alone, the ordinary forward pass. Otherwise
  the new tokens attend to the cache as it was plus themselves. When their slots are contiguous
  (one decoding step, or any T when the layer is no ring: `ring=False`, a slot for every token)
  keys and values come back as two parts, (cache, new), that the reference path scores apart
  and joins in the softmax, so nothing concatenates the cache; the new tokens are written with
  one `dynamic_update_slice` per array, which XLA does in place once the cache has been read.
  A slot a step overwrites holds the token W indices back, which a window of W masks anyway
  (an empty slot has index EMPTY, masked by causality). A multi-token call on a ring (a chunked
  prefill of a sliding or chunked layer) concatenates, then writes its last min(T, slots).
  `repeat` not None: `cache` stacks every repeat of the layer on axis 0 and this is one of them.
  """
  layer = lambda c: c if repeat is None else jax.lax.dynamic_index_in_dim(c, repeat, 0, False)
  num_slots = cache["idx"].shape[-1]
  T = k_BTKH.shape[1]
  new = {
    "k": jnp.swapaxes(k_BTKH, 1, 2).astype(cache["k"].dtype),
    "v": jnp.swapaxes(v_BTKH, 1, 2).astype(cache["v"].dtype),
    "idx": keys.q_idx_T,
    "pos": keys.q_pos_BT,
    "seg": keys.q_seg_BT,
  }
  was = {n: layer(x) for n, x in cache.items()}
  if fresh:
    k_all, v_all = k_BTKH, v_BTKH
  else:
    keys = dataclasses.replace(
      keys,
      k_idx_S=jnp.concatenate([was["idx"], keys.q_idx_T]),
      k_pos_BS=jnp.concatenate([was["pos"], keys.q_pos_BT], axis=1),
      k_seg_BS=jnp.concatenate([was["seg"], keys.q_seg_BT], axis=1),
    )
    if T == 1 or not ring:
      start = keys.q_idx_T[0] % num_slots

      def store(after):
        # Keys and values written after `after` (a scalar of the attention output) exists, so
        # XLA sees the cache read before it is overwritten and updates it in place; without
        # the dependency it copies each cache array to keep the old one. The added zero is
        # exact for any finite `after` (a non-finite one has spoilt the step anyway).
        tie = lambda x: x + jnp.zeros((), x.dtype) * after.astype(x.dtype)
        written = {n: tie(x) if n in ("k", "v") else x for n, x in new.items()}
        return {n: _write(n, cache[n], x, start, repeat) for n, x in written.items()}

      return (_heads_last(was["k"]), k_BTKH), (_heads_last(was["v"]), v_BTKH), keys, store
    k_all = _heads_last(jnp.concatenate([was["k"], new["k"]], axis=2))
    v_all = _heads_last(jnp.concatenate([was["v"], new["v"]], axis=2))
  n = min(T, num_slots)
  slot_n = keys.q_idx_T[-n:] % num_slots
  stored = {
    "k": was["k"].at[:, :, slot_n].set(new["k"][:, :, -n:]),
    "v": was["v"].at[:, :, slot_n].set(new["v"][:, :, -n:]),
    "idx": was["idx"].at[slot_n].set(keys.q_idx_T[-n:]),
    "pos": was["pos"].at[:, slot_n].set(keys.q_pos_BT[:, -n:]),
    "seg": was["seg"].at[:, slot_n].set(keys.q_seg_BT[:, -n:]),
  }
  if repeat is not None:
    stored = {
      n: jax.lax.dynamic_update_index_in_dim(cache[n], x, repeat, 0) for n, x in stored.items()
    }
  return k_all, v_all, keys, lambda after: stored
