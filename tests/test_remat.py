"""Activation checkpointing: every policy at both scopes gives the gradients of none, and saves
memory at depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nopejax.model import api as model_api
from nopejax.model import decoder
from nopejax.model import spec as config_lib
from nopejax.train import step


def _spec(**overrides):
  cfg = config_lib.model_config()
  cfg.update(dict(positions="rope,nope", num_layers=4, d_model=32, d_ff=64) | overrides)
  return config_lib.resolve(cfg)


def _batch(B, T):
  rng = np.random.default_rng(0)
  ints = lambda: jnp.asarray(rng.integers(0, 256, (B, T)), jnp.int32)
  return {
    "inputs": ints(),
    "targets": ints(),
    "segment_ids": jnp.ones((B, T), jnp.int32),
    "positions": jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)),
    "loss_mask": jnp.ones((B, T), jnp.float32),
  }


def _grads(spec, params, batch):
  return jax.jit(jax.grad(lambda p: step.loss_sums(spec, p, batch)[0]))(params)


def test_the_config_lists_every_policy():
  assert set(config_lib.REMAT_POLICIES) == {"none", *decoder.REMAT}


@pytest.fixture(scope="module")
def no_remat():
  batch = _batch(2, 16)
  params = model_api.init(_spec(), jax.random.key(0))
  return params, batch, _grads(_spec(), params, batch)


@pytest.mark.parametrize("scope", config_lib.REMAT_SCOPES)
@pytest.mark.parametrize("policy", sorted(decoder.REMAT))
def test_every_policy_gives_the_gradients_of_none(policy, scope, no_remat):
  params, batch, want = no_remat
  got = _grads(_spec(remat=policy, remat_scope=scope), params, batch)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def _temp_bytes(policy, scope, layers=32, T=1024):
  spec = _spec(num_layers=layers, positions="smollm3", d_model=64, remat=policy, remat_scope=scope)
  params = jax.eval_shape(lambda: model_api.init(spec, jax.random.key(0)))
  batch = jax.eval_shape(lambda: _batch(1, T))
  fn = jax.jit(jax.grad(lambda p, b: step.loss_sums(spec, p, b)[0]))
  return fn.lower(params, batch).compile().memory_analysis().temp_size_in_bytes


def test_remat_per_block_saves_memory_at_32_layers():
  """32 layers of SmolLM3's period (8 repeats), 1024 tokens: checkpointing each block keeps
  only block inputs; none keeps every activation."""
  table = {(p, s): _temp_bytes(p, s) for p in ("none", "full") for s in config_lib.REMAT_SCOPES}
  print({f"{p}/{s}": f"{b / 2**20:.0f} MiB" for (p, s), b in table.items()})
  assert table["full", "block"] < table["none", "block"] / 2
  assert table["full", "period"] < table["none", "period"] / 2
