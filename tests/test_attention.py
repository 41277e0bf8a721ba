"""Masks against hand-built numpy masks; the three attention paths agree."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nopejax.model import api as model_api
from nopejax.model import attention
from nopejax.model.schemes import alibi, t5

jax.config.update("jax_numpy_rank_promotion", "raise")

# Two packed documents (lengths 7 and 4) and one padding token: windows restart per document.
SEG_T = np.array([1] * 7 + [2] * 4 + [0])
POS_T = np.array(list(range(7)) + list(range(4)) + [0])


def _numpy_mask(seg_T, pos_T, kind, size):
  T = len(seg_T)
  m = np.zeros((T, T), bool)
  for t in range(T):
    for s in range(t + 1):
      if seg_T[t] != seg_T[s]:
        continue
      if kind == "sliding" and pos_T[t] - pos_T[s] >= size:
        continue
      if kind == "chunked" and pos_T[t] // size != pos_T[s] // size:
        continue
      m[t, s] = True
  return m


def _keys(seg_T, pos_T, window, batch=1):
  idx_T = jnp.arange(len(seg_T), dtype=jnp.int32)
  seg_BT = jnp.broadcast_to(jnp.asarray(seg_T, jnp.int32), (batch, len(seg_T)))
  pos_BT = jnp.broadcast_to(jnp.asarray(pos_T, jnp.int32), (batch, len(seg_T)))
  return attention.Keys(idx_T, idx_T, pos_BT, pos_BT, seg_BT, seg_BT, window)


@pytest.mark.parametrize(
  "kind,size", [("full", 0), ("sliding", 3), ("chunked", 3), ("sliding", 1), ("chunked", 4)]
)
def test_mask_matches_hand_built(kind, size):
  got = _keys(SEG_T, POS_T, attention.Window(kind, size)).mask()
  np.testing.assert_array_equal(got[0], _numpy_mask(SEG_T, POS_T, kind, size))


def test_sliding_window_sees_exactly_w_tokens_and_chunks_are_aligned():
  T = 10
  pos_T, seg_T = np.arange(T), np.ones(T, int)
  sliding = np.asarray(_keys(seg_T, pos_T, attention.Window("sliding", 3)).mask()[0])
  np.testing.assert_array_equal(sliding.sum(1), [1, 2, 3, 3, 3, 3, 3, 3, 3, 3])
  assert sliding[5, 3:6].all() and not sliding[5, 2]
  chunked = np.asarray(_keys(seg_T, pos_T, attention.Window("chunked", 4)).mask()[0])
  np.testing.assert_array_equal(chunked.sum(1), [1, 2, 3, 4, 1, 2, 3, 4, 1, 2])
  assert chunked[7, 4:8].all() and not chunked[7, 3]


def test_positions_from_segments_restart_per_document():
  np.testing.assert_array_equal(
    model_api.positions_from_segments(jnp.asarray(SEG_T)[None])[0], POS_T
  )


def _bias(name, num_heads):
  if name == "alibi":
    return functools.partial(alibi.alibi_bias, num_heads=num_heads)
  if name == "t5":
    table_UN = jax.random.normal(jax.random.key(7), (8, num_heads))
    return functools.partial(t5.t5_bias, table_UN=table_UN, max_distance=16)
  return None


def _qkv(B, T, N, K, H, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  return (
    jax.random.normal(kq, (B, T, N, H), dtype) * H**-0.5,
    jax.random.normal(kk, (B, T, K, H), dtype),
    jax.random.normal(kv, (B, T, K, H), dtype),
  )


@pytest.mark.parametrize(
  "window", [attention.Window(), attention.Window("sliding", 3), attention.Window("chunked", 4)]
)
@pytest.mark.parametrize("bias", [None, "alibi", "t5"])
def test_three_paths_agree(window, bias):
  N, K = 4, 2  # GQA
  q, k, v = _qkv(2, len(SEG_T), N, K, 8)
  keys = _keys(SEG_T, POS_T, window, batch=2)
  bias_fn = _bias(bias, N)
  want = attention.reference(q, k, v, keys, bias_fn)
  for path in (
    attention.xla,
    functools.partial(attention.blockwise, block_size=5),
    functools.partial(attention.blockwise, block_size=64),
  ):
    got = jax.jit(lambda q, k, v, path=path: path(q, k, v, keys, bias_fn))(q, k, v)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


def test_blockwise_gradients_match_reference():
  q, k, v = _qkv(1, len(SEG_T), 4, 1, 8)  # multi-query
  keys = _keys(SEG_T, POS_T, attention.Window("sliding", 4))
  bias_fn = _bias("alibi", 4)

  def loss(path, q, k, v):
    return jnp.sum(path(q, k, v, keys, bias_fn) ** 2)

  want = jax.grad(functools.partial(loss, attention.reference), argnums=(0, 1, 2))(q, k, v)
  got = jax.jit(
    jax.grad(
      functools.partial(loss, functools.partial(attention.blockwise, block_size=5)),
      argnums=(0, 1, 2),
    )
  )(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-5)


def test_paths_agree_in_bfloat16():
  q, k, v = _qkv(1, len(SEG_T), 4, 2, 16, jnp.bfloat16)
  keys = _keys(SEG_T, POS_T, attention.Window())
  want = attention.reference(q, k, v, keys).astype(jnp.float32)
  for path in (attention.xla, functools.partial(attention.blockwise, block_size=5)):
    got = jax.jit(lambda q, k, v, path=path: path(q, k, v, keys))(q, k, v)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)


def test_choose():
  common = dict(length=16, blockwise_above=64)
  assert attention.choose("xla", has_bias=True, **common) == "xla"
  assert attention.choose("auto", has_bias=False, backend="cpu", **common) == "reference"
  assert (
    attention.choose(
      "auto", has_bias=False, backend="gpu", head_dim=64, dtype=jnp.bfloat16, **common
    )
    == "cudnn"
  )
  assert attention.choose("auto", has_bias=True, backend="gpu", **common) == "reference"
  assert attention.choose("auto", has_bias=False, length=65, blockwise_above=64) == "blockwise"
