"""Generation with a KV cache: one prefill pass over the prompts, then a `lax.scan` of steps.

The model is the training Decoder with `cache_len > 0`: each Attention layer keeps its keys and
values in a Flax 'cache' collection (layout in kv_cache.py: every token for a full layer, a ring
of W slots for a sliding or chunked one), so schemes, windows, biases and the NoPE query
temperature are the forward pass's own code at each token's absolute position.

Batches are left-padded: padding gets segment id 0 (no real token attends to it) and each row's
positions start at 0 on its first real token, so every row is exactly its unpadded self. Left
padding rather than per-row write offsets because all rows then end at the same sequence index:
a step writes one cache slot shared by the whole batch (one dynamic update, no per-row scatter),
and a ring buffer's last W slots are the last W tokens of every row.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nopejax.model import decoder
from nopejax.model import spec as spec_lib


def left_pad(prompts, pad_id, multiple=16):
  """(tokens, positions, segment_ids) int32 [B, P]: prompts right-aligned, P a multiple of
  `multiple` so that prompts of similar lengths share one compiled program."""
  width = -(-max(len(p) for p in prompts) // multiple) * multiple
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  positions = np.zeros((len(prompts), width), np.int32)
  segments = np.zeros((len(prompts), width), np.int32)
  for i, prompt in enumerate(prompts):
    n = len(prompt)
    tokens[i, width - n :] = prompt
    positions[i, width - n :] = np.arange(n)
    segments[i, width - n :] = 1
  return tokens, positions, segments


def _pick(logits_BV, rng, temperature):
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, logits_BV / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("spec", "max_new_tokens", "temperature"))
def _generate(
  params, tokens_BP, positions_BP, segments_BP, rng, *, spec, max_new_tokens, temperature
):
  B, P = tokens_BP.shape
  # The last generated token is never fed back, so the cache needs one slot fewer.
  model = decoder.Decoder(spec, cache_len=P + max_new_tokens - 1)
  logits_BPV, state = model.apply(
    {"params": params}, tokens_BP, positions_BP, segments_BP, mutable=["cache"]
  )
  rng_N = jax.random.split(rng, max_new_tokens)
  first_B = _pick(logits_BPV[:, -1], rng_N[0], temperature)

  def step(carry, rng):
    cache, token_B, pos_B, index = carry
    logits_B1V, state = model.apply(
      {"params": params, "cache": cache},
      token_B[:, None],
      pos_B[:, None],
      jnp.ones((B, 1), jnp.int32),
      index[None],
      mutable=["cache"],
    )
    next_B = _pick(logits_B1V[:, 0], rng, temperature)
    return (state["cache"], next_B, pos_B + 1, index + 1), next_B

  carry = (state["cache"], first_B, positions_BP[:, -1] + 1, jnp.int32(P))
  _, rest_NB = jax.lax.scan(step, carry, rng_N[1:])
  return jnp.concatenate([first_B[:, None], rest_NB.T], axis=1)


def generate(
  model_cfg, params, prompts, max_new_tokens, *, temperature=0.0, rng=None, pad_id=0, multiple=16
):
  """int32 [B, max_new_tokens]: tokens sampled after each prompt (a list of token-id lists).

  temperature 0 is greedy. Generation runs the full `max_new_tokens` (fixed shapes); cut each
  row at its eos. Prompts of different lengths are left-padded (see the module docstring).
  """
  spec = spec_lib.resolve(model_cfg)
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature: expected >= 0, got {temperature}")
  longest = max(len(p) for p in prompts) + max_new_tokens - 1
  spec.check_length(longest, f"length {longest} (prompt + generated)")
  tokens, positions, segments = left_pad(prompts, pad_id, multiple)
  rng = jax.random.key(0) if rng is None else rng
  out = _generate(
    params,
    tokens,
    positions,
    segments,
    rng,
    spec=spec,
    max_new_tokens=int(max_new_tokens),
    temperature=float(temperature),
  )
  return np.asarray(out)
