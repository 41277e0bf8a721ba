"""Masks against hand-built numpy masks; the three attention paths agree."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nopejax.model import api as model_api
from nopejax.model import attention
from nopejax.model import spec as config_lib
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


WINDOWS = [attention.Window(), attention.Window("sliding", 3), attention.Window("chunked", 4)]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("bias", [None, "alibi", "t5"])
def test_paths_agree(window, bias):
  N, K = 4, 2  # GQA
  q, k, v = _qkv(2, len(SEG_T), N, K, 8)
  keys = _keys(SEG_T, POS_T, window, batch=2)
  bias_fn = _bias(bias, N)
  want = attention.reference(q, k, v, keys, bias_fn)
  for path in (
    attention.xla,
    functools.partial(attention.flash, block_size=5),
    functools.partial(attention.flash, block_size=64),
  ):
    got = jax.jit(lambda q, k, v, path=path: path(q, k, v, keys, bias_fn))(q, k, v)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


# Three packed documents (30, 25 and 9 tokens) and 6 padding tokens, over 10 blocks of 7.
LONG_SEG_T = np.array([1] * 30 + [2] * 25 + [3] * 9 + [0] * 6)
LONG_POS_T = np.concatenate([np.arange(30), np.arange(25), np.arange(9), np.zeros(6, int)])


def _t5_table_bias(table_UN):
  return functools.partial(t5.t5_bias, table_UN=table_UN, max_distance=16)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("window", WINDOWS + [attention.Window("sliding", 9)])
@pytest.mark.parametrize("bias", [None, "alibi", "t5"])
def test_flash_gradients_match_reference(bias, window, dtype):
  """Gradients of queries, keys, values and the T5 table (a bias parameter the custom VJP must
  carry), against the reference path in float32 from the same inputs."""
  N, K = 4, 2
  q, k, v = _qkv(2, len(LONG_SEG_T), N, K, 8, dtype)
  keys = _keys(LONG_SEG_T, LONG_POS_T, window, batch=2)
  table_UN = jax.random.normal(jax.random.key(7), (8, N))
  weights = jax.random.normal(jax.random.key(3), q.shape)

  def loss(path, q, k, v, table_UN):
    bias_fn = _t5_table_bias(table_UN) if bias == "t5" else _bias(bias, N)
    return jnp.sum(path(q, k, v, keys, bias_fn).astype(jnp.float32) * weights)

  grad = lambda path: jax.jit(jax.grad(functools.partial(loss, path), argnums=(0, 1, 2, 3)))
  f32 = lambda xs: [x.astype(jnp.float32) for x in xs]
  want = grad(attention.reference)(*f32((q, k, v)), table_UN)
  got = grad(functools.partial(attention.flash, block_size=7))(q, k, v, table_UN)
  for g, w in zip(got, want):
    assert g.dtype == (jnp.float32 if g.shape == table_UN.shape else dtype)
    scale = float(jnp.abs(w).max()) or 1.0
    atol = 2e-6 * scale if dtype == jnp.float32 else 3e-2 * scale
    np.testing.assert_allclose(g.astype(jnp.float32), w, atol=atol, rtol=1e-5)


@pytest.mark.parametrize(
  "seg_T,window,live",
  [
    (np.ones(64, int), attention.Window(), 36),  # causal: the lower triangle of 8 x 8 blocks
    (np.ones(64, int), attention.Window("sliding", 8), 15),  # each block and the one before
    (np.ones(64, int), attention.Window("chunked", 16), 12),  # 4 chunks of 2 x 2 causal blocks
    (np.repeat([1, 2], 32), attention.Window(), 20),  # two documents of 4 blocks: 2 x 10
  ],
)
def test_flash_skips_the_blocks_the_mask_empties(seg_T, window, live):
  keys = _keys(seg_T, np.asarray(api_positions(seg_T)), window)
  meta = (keys.q_idx_T, keys.k_idx_S, keys.q_pos_BT, keys.k_pos_BS, keys.q_seg_BT, keys.k_seg_BS)
  assert int(attention._block_layout(meta, window, 8, 8).live_nm.sum()) == live


def api_positions(seg_T):
  return model_api.positions_from_segments(jnp.asarray(seg_T)[None])[0]


def test_bias_is_added_in_float32_at_long_distances():
  """ALiBi's smallest slope (1/256 of 8 heads) at 16k tokens gives a bias near 64, which bf16
  rounds to steps of 0.5; queries at positions 16384+ over keys at 0..15 must still see the
  1/256 differences between neighbouring keys."""
  T, N = 16, 8
  q, k, v = _qkv(1, T, N, N, 16, jnp.bfloat16)
  pos_BT = jnp.arange(T, dtype=jnp.int32)[None]
  idx_T = jnp.arange(T, dtype=jnp.int32)
  seg_BT = jnp.ones((1, T), jnp.int32)
  # Queries far along: index order keeps them causal after every key.
  keys = attention.Keys(idx_T + T, idx_T, pos_BT + 16384, pos_BT, seg_BT, seg_BT, WINDOWS[0])
  bias_fn = _bias("alibi", N)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  want = attention.reference(*f32, keys, bias_fn)
  for path in (attention.reference, functools.partial(attention.flash, block_size=4)):
    got = path(q, k, v, keys, bias_fn).astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=2e-2)
  rounded = lambda qp, kp: bias_fn(qp, kp).astype(jnp.bfloat16).astype(jnp.float32)
  coarse = attention.reference(*f32, keys, rounded)
  assert float(jnp.abs(coarse - want).max()) > 4e-2  # what the test would catch


def test_choose():
  common = dict(length=16, flash_above=64)
  assert attention.choose("xla", has_bias=True, **common) == "xla"
  assert attention.choose("auto", has_bias=False, backend="cpu", **common) == "reference"
  gpu = dict(backend="gpu", head_dim=64, dtype=jnp.bfloat16, **common)
  assert attention.choose("auto", has_bias=False, documents=False, **gpu) == "cudnn"
  assert attention.choose("auto", has_bias=False, documents=True, **gpu) == "flash"
  assert attention.choose("auto", has_bias=True, **gpu) == "flash"
  assert attention.choose("auto", has_bias=False, backend="cpu", length=65, flash_above=64) == (
    "flash"
  )


def _train_temp_bytes(impl, length):
  """XLA's temporaries for loss + gradient of the long-context issue's model (4 layers x 64,
  SmolLM3's pattern, batch 1) at `length` tokens: compiled, not run."""
  cfg = config_lib.model_config()
  cfg.update(positions="smollm3", attention_impl=impl)
  spec = config_lib.resolve(cfg)
  params = jax.eval_shape(lambda: model_api.init(spec, jax.random.key(0)))
  ints = jax.ShapeDtypeStruct((1, length), jnp.int32)

  def loss(params, tokens, segments, positions):
    logits = model_api.forward(spec, params, tokens, segment_ids=segments, positions=positions)
    return jnp.mean(jax.nn.logsumexp(logits, -1))

  compiled = jax.jit(jax.grad(loss)).lower(params, ints, ints, ints).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_training_memory_is_linear_in_length_on_the_flash_path():
  gib = 2**30
  flash_8k, flash_32k = _train_temp_bytes("auto", 8192), _train_temp_bytes("auto", 32768)
  assert flash_32k < 2 * gib  # the bound is 4 GiB of peak for the whole process
  assert flash_32k < 4.5 * flash_8k  # 4x the length, about 4x the memory
  assert _train_temp_bytes("reference", 32768) > 50 * gib  # the T^2 probabilities
