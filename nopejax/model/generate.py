"""Generation with a KV cache: a prefill of the prompts, then a `lax.scan` of decoding steps.

Two jitted programs. `prefill` runs the prompts through the model (longer ones `PREFILL_CHUNK`
tokens at a time, each chunk attending to the cache so far plus itself); `decode` takes that
cache donated, carries it through the steps and through the layer scan whole, and writes each
step's slot in place (kv_cache.py), so a step copies no cache.

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

PREFILL_CHUNK = 1024  # prompt tokens per prefill pass: attention logits of [chunk, cache length]
# The decode program's XLA options. A step's dots are [batch, d] rows against whole weight
# matrices; on the CPU, XLA's YNNPACK dot fusions run them 20-30% slower than its Eigen dots (AMD
# EPYC, the bench_cpu shape: 10.1 against 8.1 ms a step; README Performance), so the decode
# program keeps them off there (other backends' compilers are not given the CPU option); prefill
# and training keep YNNPACK.
CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


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


@functools.partial(jax.jit, static_argnames=("spec", "cache_len", "chunk"))
def prefill(params, tokens_BP, positions_BP, segments_BP, *, spec, cache_len, chunk):
  """(logits [B, V] after the last prompt token, the filled cache), `chunk` tokens per pass.

  The first chunk is the ordinary forward pass; each later one attends to the cache plus itself
  (a `lax.scan`), so attention holds [chunk, cache_len] logits, never [P, P]. P must be a
  multiple of `chunk` when it is longer (left_pad pads it so)."""
  B, P = tokens_BP.shape
  model = decoder.Decoder(spec, cache_len=cache_len)
  chunk = min(chunk, P)
  first = lambda a: a[:, :chunk]
  logits_BCV, state = model.apply(
    {"params": params}, *map(first, (tokens_BP, positions_BP, segments_BP)), mutable=["cache"]
  )
  if chunk == P:
    return logits_BCV[:, -1], state["cache"]
  rest = lambda a: jnp.moveaxis(a[:, chunk:].reshape(B, -1, chunk), 1, 0)

  def one_chunk(cache, xs):
    tokens_BC, positions_BC, segments_BC, indices_C = xs
    logits_BCV, state = model.apply(
      {"params": params, "cache": cache},
      tokens_BC,
      positions_BC,
      segments_BC,
      indices_C,
      mutable=["cache"],
    )
    return state["cache"], logits_BCV[:, -1]

  indices_NC = jnp.arange(chunk, P, dtype=jnp.int32).reshape(-1, chunk)
  xs = (*map(rest, (tokens_BP, positions_BP, segments_BP)), indices_NC)
  cache, last_NBV = jax.lax.scan(one_chunk, state["cache"], xs)
  return last_NBV[-1], cache


def _decode(params, cache, token_B, pos_B, index, rng_N, *, spec, cache_len, temperature):
  """`decode`'s program: a `lax.scan` of N steps over the carried cache."""
  B = token_B.shape[0]
  model = decoder.Decoder(spec, cache_len=cache_len)

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

  (cache, *_), out_NB = jax.lax.scan(step, (cache, token_B, pos_B, index), rng_N)
  return out_NB.T, cache


_DECODE_JIT = dict(static_argnames=("spec", "cache_len", "temperature"), donate_argnames=("cache",))
_decode_cpu = jax.jit(_decode, compiler_options=CPU_DECODE_OPTIONS, **_DECODE_JIT)
_decode_any = jax.jit(_decode, **_DECODE_JIT)


def decode(params, cache, token_B, pos_B, index, rng_N, *, spec, cache_len, temperature):
  """(int32 [B, N], the cache): token_B (the prompt's next token) fed back N times, one cache
  slot written in place per step; the cache buffers are donated and come back updated. One
  jitted program, compiled with CPU_DECODE_OPTIONS on the CPU."""
  program = _decode_cpu if jax.default_backend() == "cpu" else _decode_any
  return program(
    params,
    cache,
    token_B,
    pos_B,
    index,
    rng_N,
    spec=spec,
    cache_len=cache_len,
    temperature=temperature,
  )


def layout(prompts, max_new_tokens, *, pad_id=0, multiple=16, prefill_chunk=PREFILL_CHUNK):
  """(tokens, positions, segments [B, P], cache_len): the prompts left-padded to a multiple of
  `multiple` (of `prefill_chunk` when one is longer than it), and the cache length that holds
  them and every generated token but the last, which is never fed back."""
  if max(len(p) for p in prompts) > prefill_chunk:
    multiple = prefill_chunk
  tokens, positions, segments = left_pad(prompts, pad_id, multiple)
  return tokens, positions, segments, tokens.shape[1] + max_new_tokens - 1


def generate(
  model_cfg,
  params,
  prompts,
  max_new_tokens,
  *,
  temperature=0.0,
  rng=None,
  pad_id=0,
  multiple=16,
  prefill_chunk=PREFILL_CHUNK,
):
  """int32 [B, max_new_tokens]: tokens sampled after each prompt (a list of token-id lists).

  temperature 0 is greedy. Generation runs the full `max_new_tokens` (fixed shapes); cut each
  row at its eos. Prompts of different lengths are left-padded (see the module docstring);
  prompts longer than `prefill_chunk` are padded to a multiple of it and prefilled a chunk at a
  time.
  """
  spec = spec_lib.resolve(model_cfg)
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature: expected >= 0, got {temperature}")
  if prefill_chunk < 1:
    raise ValueError(f"prefill_chunk: expected a positive integer, got {prefill_chunk}")
  longest = max(len(p) for p in prompts) + max_new_tokens - 1
  spec.check_length(longest, f"length {longest} (prompt + generated)")
  tokens, positions, segments, cache_len = layout(
    prompts, max_new_tokens, pad_id=pad_id, multiple=multiple, prefill_chunk=prefill_chunk
  )
  P = tokens.shape[1]
  rng_N = jax.random.split(jax.random.key(0) if rng is None else rng, max_new_tokens)
  last_BV, cache = prefill(
    params, tokens, positions, segments, spec=spec, cache_len=cache_len, chunk=prefill_chunk
  )
  first_B = _pick(last_BV, rng_N[0], temperature)
  if max_new_tokens == 1:
    return np.asarray(first_B)[:, None]
  rest_BN, _ = decode(
    params,
    cache,
    first_B,
    jnp.asarray(positions[:, -1] + 1),
    jnp.int32(P),
    rng_N[1:],
    spec=spec,
    cache_len=cache_len,
    temperature=float(temperature),
  )
  return np.concatenate([np.asarray(first_B)[:, None], np.asarray(rest_BN)], axis=1)
