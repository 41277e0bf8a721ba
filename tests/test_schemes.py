"""Positional functions against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nopejax.model.schemes import absolute, alibi, rope, scaling, t5

jax.config.update("jax_numpy_rank_promotion", "raise")


def _rotation(angle):
  return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


@pytest.mark.parametrize("p", [0, 1, 3, 17, -5])
def test_rope_of_a_2d_vector_is_the_2x2_rotation_by_p(p):
  x_BTNH = jnp.asarray([[[[0.3, -1.7]]]], jnp.float32)
  got = rope.rope(x_BTNH, jnp.asarray([[p]]), theta=10000.0, rotary_dim=2)
  want = _rotation(p * 10000.0**0) @ np.array([0.3, -1.7])
  np.testing.assert_allclose(np.asarray(got)[0, 0, 0], want, rtol=1e-5, atol=1e-6)


def test_rope_rotates_rotate_half_pairs_by_their_frequency():
  theta, p = 100.0, 3
  x_BTNH = jax.random.normal(jax.random.key(0), (1, 1, 2, 8))
  got = np.asarray(rope.rope(x_BTNH, jnp.asarray([[p]]), theta=theta, rotary_dim=8))
  x = np.asarray(x_BTNH)
  for i in range(4):  # pair (i, i + 4) turns by p * theta^(-2i/8)
    want = np.einsum("ij,nj->ni", _rotation(p * theta ** (-2 * i / 8)), x[0, 0][:, [i, i + 4]])
    np.testing.assert_allclose(got[0, 0][:, [i, i + 4]], want, rtol=1e-5, atol=1e-6)


def test_partial_rope_leaves_the_other_dims_untouched():
  x_BTNH = jax.random.normal(jax.random.key(1), (2, 5, 3, 16))
  pos_BT = jnp.broadcast_to(jnp.arange(5) * 7, (2, 5))
  got = rope.rope(x_BTNH, pos_BT, theta=10000.0, rotary_dim=4)
  np.testing.assert_array_equal(got[..., 4:], x_BTNH[..., 4:])
  assert not np.allclose(got[:, 1:, :, :4], x_BTNH[:, 1:, :, :4])
  full = rope.rope(x_BTNH[..., :4], pos_BT, theta=10000.0, rotary_dim=4)
  np.testing.assert_allclose(got[..., :4], full, rtol=1e-6)


def test_rope_dot_products_depend_only_on_distance():
  q = jax.random.normal(jax.random.key(2), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(3), (1, 1, 1, 8))

  def score(m, n):
    rq = rope.rope(q, jnp.asarray([[m]]), theta=10000.0, rotary_dim=8)
    rk = rope.rope(k, jnp.asarray([[n]]), theta=10000.0, rotary_dim=8)
    return float(jnp.sum(rq * rk))

  np.testing.assert_allclose(score(9, 4), score(105, 100), rtol=1e-4)


def test_rope_at_position_zero_is_identity():
  x = jax.random.normal(jax.random.key(4), (1, 3, 2, 8))
  np.testing.assert_allclose(
    rope.rope(x, jnp.zeros((1, 3), jnp.int32), theta=10000.0, rotary_dim=8), x, atol=1e-7
  )


def test_alibi_slopes_8_heads():
  np.testing.assert_allclose(alibi.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])


def test_alibi_slopes_6_heads_interleave_the_8_head_sequence():
  # Press et al.: the 4-head slopes, then every other slope of the 8-head sequence.
  np.testing.assert_allclose(alibi.alibi_slopes(6), [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])


def test_alibi_bias_is_minus_slope_times_distance():
  pos_BT = jnp.asarray([[0, 1, 2, 5]])
  bias_BNTS = alibi.alibi_bias(pos_BT, pos_BT, num_heads=2)  # slopes 1/16, 1/256
  assert bias_BNTS.shape == (1, 2, 4, 4)
  assert float(bias_BNTS[0, 0, 3, 0]) == pytest.approx(-5 / 16)
  assert float(bias_BNTS[0, 1, 2, 1]) == pytest.approx(-1 / 256)
  np.testing.assert_array_equal(np.diagonal(bias_BNTS[0], axis1=1, axis2=2), 0.0)


@pytest.mark.parametrize(
  "distance,bucket",
  [
    (-3, 0),
    (0, 0),
    (1, 1),
    (15, 15),  # exact half
    (16, 16),
    (32, 21),
    (64, 26),
    (127, 31),
    (128, 31),
    (5000, 31),  # 16 + int(16 log(n/16)/log 8)
  ],
)
def test_t5_bucket_causal_defaults(distance, bucket):
  got = t5.t5_bucket(jnp.asarray(distance), num_buckets=32, max_distance=128)
  assert int(got) == bucket


def test_t5_bias_looks_up_the_table_per_head():
  table_UN = jnp.arange(8 * 2, dtype=jnp.float32).reshape(8, 2)
  pos_BT = jnp.asarray([[0, 1, 2, 3]])
  bias_BNTS = t5.t5_bias(pos_BT, pos_BT, table_UN, max_distance=16)
  assert bias_BNTS.shape == (1, 2, 4, 4)
  assert float(bias_BNTS[0, 1, 3, 1]) == table_UN[2, 1]  # distance 2 -> bucket 2, head 1
  assert float(bias_BNTS[0, 0, 2, 2]) == table_UN[0, 0]


def test_sinusoidal_at_position_zero_is_sin_zeros_then_cos_ones():
  emb = absolute.sinusoidal(jnp.zeros((1, 1), jnp.int32), 8)
  np.testing.assert_array_equal(emb[0, 0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_sinusoidal_frequencies():
  emb = absolute.sinusoidal(jnp.asarray([[1]]), 4)  # frequencies 1 and 1/100
  np.testing.assert_allclose(
    emb[0, 0], [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)], rtol=1e-6
  )
  assert absolute.sinusoidal(jnp.asarray([[2]]), 5).shape == (1, 1, 5)  # odd widths pad


@pytest.mark.parametrize(
  "pos,want",
  [
    (0, 1.0),
    (8190, 1.0),
    (8191, 1 + 0.1 * math.log(2)),
    (3 * 8192 - 1, 1 + 0.1 * math.log(4)),
  ],
)
def test_llama4_query_temperature(pos, want):
  got = scaling.query_temperature(jnp.asarray([[pos]]), floor_scale=8192.0, attn_scale=0.1)
  assert float(got[0, 0]) == pytest.approx(want, rel=1e-6)
