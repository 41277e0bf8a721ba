"""Decoding with the KV cache: cache equals recompute for every scheme and window, cache
layout, sampling, and refused lengths."""

import functools
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nopejax
from nopejax.model import cpu_kernels
from nopejax.model import decoder as model_lib
from nopejax.model import generate as decode
from nopejax.model import spec as config_lib

jax.config.update("jax_numpy_rank_promotion", "raise")

PROMPT_LENGTHS = (3, 7, 5)  # left-padded together; with 9 new tokens every row passes W and
NEW_TOKENS = 9  # several chunk boundaries of the windows below


def tiny(**overrides):
  cfg = config_lib.model_config()
  cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.d_ff = 64, 32, 2, 64
  cfg.num_heads, cfg.num_kv_heads = 4, 2
  cfg.t5_num_buckets, cfg.t5_max_distance = 8, 16
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def _prompts(vocab=64):
  rng = np.random.default_rng(0)
  return [rng.integers(0, vocab, n).tolist() for n in PROMPT_LENGTHS]


def recompute_greedy(cfg, params, prompt, steps, width=32):
  """Argmax decoding by a full forward pass over the whole sequence at every step (right
  padding is invisible to earlier tokens under the causal mask, so one compiled width serves)."""
  forward = jax.jit(
    functools.partial(nopejax.forward, cfg), compiler_options={"xla_backend_optimization_level": 0}
  )
  tokens = list(prompt)
  for _ in range(steps):
    padded = np.zeros((1, width), np.int32)
    padded[0, : len(tokens)] = tokens
    logits = forward(params, padded)
    tokens.append(int(np.argmax(logits[0, len(tokens) - 1])))
  return tokens[len(prompt) :]


# Every scheme under every window, one 4-layer model per window (each layer a different scheme),
# then Llama 4: chunked RoPE layers and global NoPE layers whose query temperature changes every
# 3 positions here, so generated tokens see several temperatures.
CASES = [
  (",".join(f"{s}@{w}" for s in ("nope", "rope", "alibi", "t5")), "full", dict(num_layers=4))
  for w in ("full", "sliding:3", "chunked:4")
]
CASES += [
  ("llama4:4", "full", dict(num_layers=4, temperature_floor_scale=3.0)),
  ("nope", "sliding:4", dict(query_temperature=True, temperature_floor_scale=3.0)),
]


@pytest.mark.parametrize(
  "positions,windows,extra",
  CASES,
  ids=["full", "sliding", "chunked", "llama4", "nope-temp-sliding"],
)
def test_cached_greedy_equals_recompute(positions, windows, extra):
  cfg = tiny(positions=positions, windows=windows, **extra)
  params = nopejax.init(cfg, jax.random.key(1))
  prompts = _prompts()
  got = decode.generate(cfg, params, prompts, NEW_TOKENS, multiple=4)
  want = [recompute_greedy(cfg, params, p, NEW_TOKENS) for p in prompts]
  assert got.tolist() == want


@pytest.mark.parametrize("windows", ["full", "sliding:3", "chunked:4"])
def test_chunked_prefill_equals_recompute(windows):
  """Prompts longer than `prefill_chunk` are prefilled 4 tokens at a time: later chunks attend to
  the cache plus themselves (written in place on full layers, merged into the ring on windowed
  ones), over two repeats of the period, so the carried cache's per-repeat slots are exercised."""
  cfg = tiny(positions="nope,rope,alibi,t5", windows=windows, num_layers=8)
  params = nopejax.init(cfg, jax.random.key(2))
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, 64, n).tolist() for n in (3, 13, 9)]
  got = decode.generate(cfg, params, prompts, 6, prefill_chunk=4)
  assert got.tolist() == decode.generate(cfg, params, prompts, 6).tolist()
  assert got.tolist() == [recompute_greedy(cfg, params, p, 6) for p in prompts]


def test_decode_donates_the_cache_and_returns_it_updated():
  """The decode loop takes the prefill's cache buffers (donated, so XLA writes the slots in
  place) and hands back the cache after the last token."""
  cfg = tiny(positions="nope,rope@sliding:3", num_layers=4)
  spec = config_lib.resolve(cfg)
  params = nopejax.init(cfg, jax.random.key(0))
  tokens, positions, segments = decode.left_pad(_prompts(), 0, 4)
  cache_len = tokens.shape[1] + 4
  last_BV, cache = decode.prefill(
    params, tokens, positions, segments, spec=spec, cache_len=cache_len, chunk=4
  )
  out_BN, after = decode.decode(
    params,
    cache,
    jnp.argmax(last_BV, -1).astype(jnp.int32),
    jnp.asarray(positions[:, -1] + 1),
    jnp.int32(tokens.shape[1]),
    jax.random.split(jax.random.key(0), 4),
    spec=spec,
    cache_len=cache_len,
    temperature=0.0,
  )
  assert out_BN.shape == (3, 4)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(cache))
  # 4 tokens fed at indices P..P+3: a full layer's slot i holds token i, a ring the last 3.
  full_idx = after["layers"]["block_0"]["attn"]["idx"][0]
  np.testing.assert_array_equal(full_idx, np.arange(cache_len))
  ring_idx = after["layers"]["block_1"]["attn"]["idx"][0]
  assert ring_idx.tolist() == [
    i for i in sorted(range(cache_len - 3, cache_len), key=lambda i: i % 3)
  ]


def test_cache_holds_a_window_per_layer():
  """A full layer keeps every token, a sliding or chunked one W slots ([repeats, B, K, slots, H]:
  heads before slots, the layout the decoding step's dots read in place)."""
  cfg = tiny(positions="nope@sliding:3,rope@chunked:4,alibi,t5", num_layers=4)
  spec = config_lib.resolve(cfg)
  params = nopejax.init(cfg, jax.random.key(0))
  tokens = jnp.zeros((2, 6), jnp.int32)
  _, state = jax.eval_shape(
    functools.partial(model_lib.Decoder(spec, cache_len=20).apply, mutable=["cache"]),
    {"params": params},
    tokens,
    jnp.zeros_like(tokens),
    jnp.ones_like(tokens),
  )
  blocks = state["cache"]["layers"]
  slots = [blocks[f"block_{i}"]["attn"]["k"].shape for i in range(4)]
  assert slots == [(1, 2, 2, 3, 8), (1, 2, 2, 4, 8), (1, 2, 2, 20, 8), (1, 2, 2, 20, 8)]


def test_sampling():
  cfg = tiny(positions="rope")
  params = nopejax.init(cfg, jax.random.key(1))
  prompts = _prompts()
  greedy = decode.generate(cfg, params, prompts, 6)
  cold = decode.generate(cfg, params, prompts, 6, temperature=1e-4, rng=jax.random.key(3))
  np.testing.assert_array_equal(cold, greedy)
  a = decode.generate(cfg, params, prompts, 6, temperature=1.0, rng=jax.random.key(3))
  b = decode.generate(cfg, params, prompts, 6, temperature=1.0, rng=jax.random.key(3))
  c = decode.generate(cfg, params, prompts, 6, temperature=1.0, rng=jax.random.key(4))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (3, 6) and a.min() >= 0 and a.max() < 64 and (a != c).any()


def test_learned_positions_past_max_len_are_refused():
  cfg = tiny(input_positions="learned", max_len=8)
  params = nopejax.init(cfg, jax.random.key(0))
  with pytest.raises(
    ValueError, match=r"length 10 \(prompt \+ generated\) needs 10 positions .* model.max_len=8"
  ):
    decode.generate(cfg, params, [[1, 2, 3, 4, 5]], 6)


def test_cpu_decode_program_takes_eigen_dots_and_the_attention_kernel():
  """On the CPU `decode` runs the program compiled without YNNPACK's dot fusions (slower for its
  [batch, d] rows: generate.CPU_DECODE_OPTIONS) and with the decode-attention kernel; the prefill
  keeps them and XLA's attention."""
  cfg = tiny(positions="rope")
  spec = config_lib.resolve(cfg)
  params = nopejax.init(cfg, jax.random.key(0))
  tokens, positions, segments, cache_len = decode.layout(_prompts(), 4)
  prefill = decode.prefill.lower(
    params, tokens, positions, segments, spec=spec, cache_len=cache_len, chunk=1024
  ).compile()
  assert "__ynn_fusion" in prefill.as_text()
  _, cache = prefill(params, tokens, positions, segments)
  args = (params, cache, jnp.ones(3, jnp.int32), jnp.asarray(positions[:, -1] + 1))
  args += (jnp.int32(tokens.shape[1]), jax.random.split(jax.random.key(0), 3))
  static = dict(spec=spec, cache_len=cache_len, temperature=0.0)
  program = decode._decode_cpu.lower(*args, **static).compile().as_text()
  assert "__ynn_fusion" not in program and "dot" in program
  # Attention through the CPU kernel (cpu_kernels.py): once per layer of the scanned period.
  assert program.count(f'custom_call_target="{cpu_kernels.TARGET}"') == len(spec.period)
  assert cpu_kernels.TARGET not in prefill.as_text()
  out, _ = decode.decode(*args, **static)  # compiles or reuses _decode_cpu, never _decode_any
  assert out.shape == (3, 3) and decode._decode_cpu._cache_size() >= 1
  assert decode._decode_any._cache_size() == 0
