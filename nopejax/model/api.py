"""The public functional API: `init(model_cfg, rng)` and `forward(model_cfg, params, tokens)`."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nopejax.model import decoder
from nopejax.model import spec as spec_lib


def _boxed_init(spec, rng):
  tokens_BT = jnp.zeros((1, 1), jnp.int32)
  return decoder.Decoder(spec).init(rng, tokens_BT, tokens_BT, tokens_BT + 1)["params"]


@functools.partial(jax.jit, static_argnums=0)
def _init(spec, rng):
  # Jitted: run eagerly, the initializers dispatch op by op and take seconds even for a tiny
  # model; compiled once per spec, a second init (another seed) is free.
  return nn.meta.unbox(_boxed_init(spec, rng))


def init(model_cfg, rng):
  """Fresh parameters: a plain nested dict of arrays (scanned layers stacked on axis 0)."""
  return _init(spec_lib.resolve(model_cfg), rng)


def param_axes(model_cfg):
  """Logical axis names of every parameter, as a pytree of PartitionSpecs shaped like params."""
  spec = spec_lib.resolve(model_cfg)
  boxed = jax.eval_shape(lambda: _boxed_init(spec, jax.random.key(0)))
  return nn.get_partition_spec(boxed)


def positions_from_segments(segment_ids_BT):
  """Per-document positions: 0, 1, ... restarting wherever the segment id changes."""
  idx_BT = jnp.broadcast_to(
    jnp.arange(segment_ids_BT.shape[1], dtype=jnp.int32), segment_ids_BT.shape
  )
  starts_BT = jnp.concatenate(
    [jnp.ones_like(segment_ids_BT[:, :1], bool), segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]],
    axis=1,
  )
  start_BT = jax.lax.cummax(jnp.where(starts_BT, idx_BT, 0), axis=1)
  return idx_BT - start_BT


def _check_concrete(spec, tokens, positions):
  """Checked mode: eager calls with concrete arrays validate ids; traced calls cannot.

  Under jit, out-of-range token ids (negative ones included) are not checked: the embedding
  lookup fills them with NaN, so the logits become NaN and the training loop's non-finite guard
  stops on them.
  """
  if isinstance(tokens, jax.core.Tracer):
    return
  tokens = np.asarray(tokens)
  if tokens.size and (tokens.min() < 0 or tokens.max() >= spec.vocab_size):
    raise ValueError(
      f"tokens: ids must lie in [0, model.vocab_size={spec.vocab_size}), "
      f"got min {tokens.min()} max {tokens.max()}"
    )
  if spec.input_positions == "learned" and not isinstance(positions, jax.core.Tracer):
    positions = np.asarray(positions)
    low, top = int(positions.min(initial=0)), int(positions.max(initial=0))
    if low < 0 or top >= spec.max_len:
      raise ValueError(
        f"positions: learned input positions cover [0, model.max_len="
        f"{spec.max_len}), got positions from {low} to {top}"
      )


def _inputs(spec, tokens, segment_ids, positions):
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens: expected shape [batch, length], got {tokens.shape}")
  if positions is None:
    ones = jnp.ones(tokens.shape, jnp.int32)
    positions = positions_from_segments(ones if segment_ids is None else jnp.asarray(segment_ids))
  _check_concrete(spec, tokens, positions)
  segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
  return tokens, jnp.asarray(positions), segment_ids


def forward(model_cfg, params, tokens, *, segment_ids=None, positions=None):
  """Logits float32 [B, T, V] for int tokens [B, T].

  segment_ids mark packed documents (no attention across them; 0 is padding; None: one
  document per row); positions default to 0, 1, ... restarting per document.
  """
  spec = spec_lib.resolve(model_cfg)
  args = _inputs(spec, tokens, segment_ids, positions)
  return decoder.Decoder(spec).apply({"params": params}, *args)


def hidden(model_cfg, params, tokens, *, segment_ids=None, positions=None):
  """(final hidden states [B, T, D], output head [D, V]) in the compute dtype: `forward`
  without the logits, for a loss that computes them a chunk at a time (train/loss.py)."""
  spec = spec_lib.resolve(model_cfg)
  args = _inputs(spec, tokens, segment_ids, positions)
  return decoder.Decoder(spec, logits=False).apply({"params": params}, *args)
