"""The chunked loss against the dense one: sums and gradients, and its memory at vocab 128k."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nopejax.model import api as model_api
from nopejax.model import spec as config_lib
from nopejax.train import loss, step


def _dense_sums(logits_BTV, targets_BT, mask_BT, z_loss):
  """The plain computation from full logits, written out independently."""
  logp_BTV = jax.nn.log_softmax(logits_BTV, -1)
  ce_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], -1)[..., 0]
  logz_BT = jax.nn.logsumexp(logits_BTV, -1)
  correct_BT = jnp.argmax(logits_BTV, -1) == targets_BT
  return {
    "objective": jnp.sum((ce_BT + z_loss * logz_BT**2) * mask_BT),
    "ce": jnp.sum(ce_BT * mask_BT),
    "correct": jnp.sum(correct_BT * mask_BT),
  }


@pytest.mark.parametrize("chunk", [0, 8, 5, 64])  # dense, divides 40, does not, longer than T
def test_chunked_sums_and_gradients_equal_dense(chunk):
  B, T, D, V = 2, 40, 16, 50
  ks = jax.random.split(jax.random.key(0), 4)
  x_BTD = jax.random.normal(ks[0], (B, T, D))
  head_DV = jax.random.normal(ks[1], (D, V))
  targets_BT = jax.random.randint(ks[2], (B, T), 0, V)
  mask_BT = (jax.random.uniform(ks[3], (B, T)) > 0.3).astype(jnp.float32)

  def chunked(x, head):
    return loss.token_sums(x, head, targets_BT, mask_BT, z_loss=1e-2, chunk=chunk)

  def dense(x, head):
    return _dense_sums(x @ head, targets_BT, mask_BT, 1e-2)

  got, want = jax.jit(chunked)(x_BTD, head_DV), dense(x_BTD, head_DV)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5)
  grad = lambda f: jax.grad(lambda x, h: f(x, h)["objective"], argnums=(0, 1))(x_BTD, head_DV)
  for g, w in zip(jax.jit(lambda: grad(chunked))(), grad(dense)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_loss_sums_equal_the_logits_of_forward():
  cfg = config_lib.model_config()
  cfg.update(positions="rope,alibi", loss_chunk=7)
  spec = config_lib.resolve(cfg)
  params = model_api.init(spec, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.integers(0, 256, (2, 30)),
    "targets": rng.integers(0, 256, (2, 30)),
    "segment_ids": np.repeat([[1, 2]], 15, 1).reshape(1, 30).repeat(2, 0),
    "loss_mask": (rng.random((2, 30)) > 0.2).astype(np.float32),
  }
  batch["positions"] = model_api.positions_from_segments(jnp.asarray(batch["segment_ids"]))
  objective, sums = step.loss_sums(spec, params, batch, z_loss=1e-3)
  logits = model_api.forward(
    spec, params, batch["inputs"], segment_ids=batch["segment_ids"], positions=batch["positions"]
  )
  want = _dense_sums(logits, jnp.asarray(batch["targets"]), batch["loss_mask"], 1e-3)
  np.testing.assert_allclose(objective, want["objective"], rtol=1e-5)
  np.testing.assert_allclose(sums["ce"], want["ce"], rtol=1e-5)
  assert sums["correct"] == want["correct"] and sums["tokens"] == batch["loss_mask"].sum()


def _loss_grad_temp_bytes(chunk, B=1, T=4096, D=64, V=131072):
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((B, T, D), (D, V))]
  ints = jax.ShapeDtypeStruct((B, T), jnp.int32)

  def objective(x, head, targets):
    mask = jnp.ones(targets.shape, jnp.float32)
    return loss.token_sums(x, head, targets, mask, chunk=chunk)["objective"]

  fn = jax.jit(jax.grad(functools.partial(objective), argnums=(0, 1)))
  return fn.lower(*shapes, ints).compile().memory_analysis().temp_size_in_bytes


def test_chunked_loss_never_holds_the_float32_logits_at_vocab_128k():
  logits_bytes = 4096 * 131072 * 4  # one fp32 [1, 4096, 128k] array: 2 GiB
  dense, chunked = _loss_grad_temp_bytes(0), _loss_grad_temp_bytes(512)
  print(
    f"loss + grad temporaries at vocab 128k, 4096 tokens: dense {dense / 2**30:.2f} GiB, "
    f"chunks of 512 {chunked / 2**30:.2f} GiB"
  )
  assert dense >= logits_bytes
  assert chunked < logits_bytes / 2  # one chunk's logits and their gradient: 2 x 256 MiB


def test_unpacked_rows_need_no_segment_ids():
  """data.pack=False: one document per row, padding after it. Without segment ids (so cuDNN
  needs no mask) the masked loss is the same: no real token sees the padding after it."""
  spec = config_lib.resolve(config_lib.model_config())
  params = model_api.init(spec, jax.random.key(0))
  lengths = np.array([30, 17])
  real = np.arange(32)[None] < lengths[:, None]
  rng = np.random.default_rng(1)
  batch = {
    "inputs": np.where(real, rng.integers(1, 256, (2, 32)), 0),
    "targets": np.where(real, rng.integers(1, 256, (2, 32)), 0),
    "segment_ids": real.astype(np.int32),
    "positions": np.where(real, np.arange(32)[None], 0),
    "loss_mask": real.astype(np.float32),
  }
  packed = step.loss_sums(spec, params, batch, documents=True)
  unpacked = step.loss_sums(spec, params, batch, documents=False)
  np.testing.assert_allclose(unpacked[0], packed[0], rtol=1e-6)
