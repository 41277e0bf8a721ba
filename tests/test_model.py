"""Model properties on tiny configs: causality, packing, shift invariance, GQA, dtypes, errors."""

import functools
import re

import checks
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import nopejax
from nopejax.model import spec as config_lib

jax.config.update("jax_numpy_rank_promotion", "raise")

SCHEMES = ("nope", "rope", "alibi", "t5")
WINDOWS = ("full", "sliding:3", "chunked:4")
PATHS = ("reference", "xla", "flash")


def tiny(**overrides):
  """A 2-layer, d_model 32 model; the defaults of `model_config()` otherwise."""
  cfg = config_lib.model_config()
  cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.d_ff = 64, 32, 2, 64
  cfg.num_heads, cfg.num_kv_heads = 4, 2
  cfg.t5_num_buckets, cfg.t5_max_distance = 8, 16
  cfg.block_size = 5  # divides none of the test lengths
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def jit(fn):
  """jax.jit at XLA's lowest backend optimization level: the same program, compiled in about
  half the time, which is most of what these tests spend on a CPU."""
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


@functools.cache
def _cached_params(key):
  cfg = tiny(**dict(key))
  return jit(lambda rng: nopejax.init(cfg, rng))(jax.random.key(0))


def params_for(cfg):
  """init(cfg, key(0)), shared between configs whose params trees are the same.

  Windows, the attention path, remat, dtypes and the temperature leave the tree alone, and so
  does swapping one parameter-free scheme (nope, rope, alibi) for another.
  """
  free = (
    "windows",
    "attention_impl",
    "remat",
    "dtype",
    "query_temperature",
    "block_size",
    "rope_fraction",
    "rope_theta",
    "temperature_floor_scale",
  )
  key = {k: v for k, v in cfg.items() if k not in free and v != tiny()[k]}
  if key.get("positions", "nope") in ("rope", "alibi"):
    key.pop("positions")
  return _cached_params(tuple(sorted(key.items())))


def _tokens(T, B=1, seed=0, vocab=64):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


def _forward(cfg, use_jit=True):
  def fn(params, tokens, segment_ids=None, positions=None):
    return nopejax.forward(cfg, params, tokens, segment_ids=segment_ids, positions=positions)

  return jit(fn) if use_jit else fn


@pytest.mark.parametrize("use_jit", [False, True])
def test_forward_shapes_and_dtype(use_jit):
  cfg = tiny(positions="rope,nope", input_positions="sinusoidal")
  params = params_for(cfg)
  logits = _forward(cfg, use_jit)(params, _tokens(10, B=3))
  assert logits.shape == (3, 10, 64) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------
# Causality, proven by gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("window", WINDOWS)
def test_causality_by_gradients(window, path):
  """One layer of every scheme, all under `window` and `path`: a future token reaching any layer
  would reach the logits, so one model per window and path covers every combination."""
  T = 12
  cfg = tiny(
    positions=",".join(SCHEMES),
    num_layers=4,
    windows=window,
    attention_impl=path,
    tie_embeddings=False,
  )
  params = params_for(cfg)
  tokens = jax.random.permutation(jax.random.key(2), cfg.vocab_size)[:T][None]
  jac_TS = checks.input_jacobian_norms(cfg, params, tokens, jit)
  assert (jac_TS[np.triu_indices(T, 1)] == 0).all(), "a token sees the future"
  assert (np.diagonal(jac_TS) > 0).all()
  if window == "full":
    assert (jac_TS[np.tril_indices(T, -1)] > 0).all()


def test_attention_paths_give_the_same_logits():
  tokens = _tokens(17, B=2)
  segment_ids = jnp.asarray([[1] * 9 + [2] * 8, [1] * 17])
  logits = {}
  for path in PATHS:
    cfg = tiny(positions=",".join(SCHEMES), num_layers=4, windows="sliding:6", attention_impl=path)
    logits[path] = _forward(cfg)(params_for(cfg), tokens, segment_ids)
  np.testing.assert_allclose(logits["xla"], logits["reference"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits["flash"], logits["reference"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Packing equals separate documents
# ---------------------------------------------------------------------------------------------


def _packing_case(cfg, use_jit=True):
  """Three 5-token documents and 2 padding tokens in one row vs the documents as a batch."""
  params = params_for(cfg)
  docs_DL = _tokens(5, B=3, seed=10)
  tokens = jnp.concatenate([docs_DL.reshape(1, 15), jnp.zeros((1, 2), jnp.int32)], axis=1)
  segment_ids = jnp.asarray([[1] * 5 + [2] * 5 + [3] * 5 + [0] * 2])
  forward = _forward(cfg, use_jit)
  packed = forward(params, tokens, segment_ids)
  alone = forward(params, docs_DL)
  np.testing.assert_allclose(packed[0, :15].reshape(3, 5, -1), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", WINDOWS)
def test_packed_documents_equal_documents_alone(window):
  """Every scheme, one layer each, under `window` (windows restart with each document)."""
  _packing_case(tiny(positions=",".join(SCHEMES), num_layers=4, windows=window))


@pytest.mark.parametrize("input_positions", ["learned", "sinusoidal"])
def test_packing_with_absolute_input_positions(input_positions):
  _packing_case(tiny(positions="nope", input_positions=input_positions))


def test_packing_on_the_flash_path():
  _packing_case(tiny(positions="rope,alibi", windows="sliding:3", attention_impl="flash"))


# ---------------------------------------------------------------------------------------------
# Shift invariance of relative schemes; NoPE ignores positions; absolute ones do not
# ---------------------------------------------------------------------------------------------


def _logits_at(cfg, positions, use_jit=True):
  params = params_for(cfg)
  return _forward(cfg, use_jit)(params, _tokens(positions.shape[1]), None, positions)


@pytest.mark.parametrize("window", ["full", "sliding:3"])
@pytest.mark.parametrize("scheme", ["rope", "alibi", "t5"])
def test_relative_schemes_are_shift_invariant(scheme, window):
  cfg = tiny(positions=scheme, windows=window)
  pos = jnp.arange(10)[None]
  np.testing.assert_allclose(_logits_at(cfg, pos + 37), _logits_at(cfg, pos), atol=2e-5)


def test_chunked_rope_is_invariant_to_whole_chunk_shifts():
  cfg = tiny(positions="rope@chunked:4")
  pos = jnp.arange(10)[None]
  np.testing.assert_allclose(_logits_at(cfg, pos + 8), _logits_at(cfg, pos), atol=2e-5)
  assert not np.allclose(_logits_at(cfg, pos + 1), _logits_at(cfg, pos), atol=1e-3)


@pytest.mark.parametrize("use_jit", [False, True])
def test_nope_ignores_positions(use_jit):
  cfg = tiny(positions="nope")
  pos = jnp.arange(10)[None]
  scrambled = jax.random.randint(jax.random.key(3), (1, 10), -50, 5000)
  np.testing.assert_array_equal(_logits_at(cfg, scrambled, use_jit), _logits_at(cfg, pos, use_jit))


def test_query_temperature_depends_on_position():
  cfg = tiny(positions="nope", query_temperature=True, temperature_floor_scale=4.0)
  pos = jnp.arange(10)[None]
  assert not np.allclose(_logits_at(cfg, pos + 40), _logits_at(cfg, pos), atol=1e-3)
  cfg = tiny(positions="nope", query_temperature=True)  # floor 8192: scale 1 below position 8191
  np.testing.assert_allclose(_logits_at(cfg, pos + 40), _logits_at(cfg, pos), atol=1e-6)


@pytest.mark.parametrize("input_positions", ["learned", "sinusoidal"])
def test_absolute_input_positions_are_not_shift_invariant(input_positions):
  cfg = tiny(positions="nope", input_positions=input_positions)
  pos = jnp.arange(10)[None]
  assert not np.allclose(_logits_at(cfg, pos + 37), _logits_at(cfg, pos), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# GQA, dtypes, remat
# ---------------------------------------------------------------------------------------------


def test_gqa_equals_mha_with_repeated_kv_heads():
  common = dict(positions="rope,alibi,t5", num_layers=3, attn_bias=True, qk_norm=True)
  gqa_cfg, mha_cfg = tiny(num_kv_heads=2, **common), tiny(num_kv_heads=4, **common)
  params = params_for(gqa_cfg)
  rng = np.random.default_rng(5)
  params = jax.tree_util.tree_map(
    lambda p: p + 0.01 * rng.standard_normal(p.shape, np.float32), params
  )  # nonzero biases and norm scales that differ per head

  def repeat_kv(path, p):
    name = path[-1].key
    return jnp.repeat(p, 2, axis=-2) if name in ("k", "v", "k_bias", "v_bias") else p

  mha_params = jax.tree_util.tree_map_with_path(repeat_kv, params)
  assert jax.tree_util.tree_structure(mha_params) == jax.tree_util.tree_structure(
    jax.eval_shape(lambda: nopejax.init(mha_cfg, jax.random.key(0)))
  )
  tokens = _tokens(12, B=2)
  np.testing.assert_allclose(
    _forward(mha_cfg)(mha_params, tokens), _forward(gqa_cfg)(params, tokens), atol=1e-5, rtol=1e-5
  )


def test_bfloat16_forward_is_close_to_float32():
  common = dict(positions="rope,alibi,t5,nope", num_layers=4)
  params = params_for(tiny(**common))
  tokens = _tokens(16, B=2)
  f32 = _forward(tiny(**common))(params, tokens)
  bf16 = _forward(tiny(dtype="bfloat16", **common))(params, tokens)
  assert bf16.dtype == jnp.float32
  scale = float(jnp.abs(f32).max())
  assert float(jnp.abs(bf16 - f32).max()) < 0.02 * scale
  assert float(jnp.mean(jnp.argmax(bf16, -1) == jnp.argmax(f32, -1))) > 0.9


def _loss(cfg, params, tokens):
  logits = nopejax.forward(cfg, params, tokens[:, :-1])
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradients(policy):
  common = dict(positions="rope,nope", num_layers=4)
  params = params_for(tiny(**common))
  tokens = _tokens(13, B=2)
  want = jit(jax.value_and_grad(lambda p: _loss(tiny(**common), p, tokens)))(params)
  got = jit(jax.value_and_grad(lambda p: _loss(tiny(remat=policy, **common), p, tokens)))(params)
  jax.tree_util.tree_map(
    lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5), got, want
  )


# ---------------------------------------------------------------------------------------------
# Static schemes: compiled programs and the scanned params layout
# ---------------------------------------------------------------------------------------------


def _hlo(cfg):
  params = jax.eval_shape(lambda: nopejax.init(cfg, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return jax.jit(lambda p, t: nopejax.forward(cfg, p, t)).lower(params, tokens).as_text()


def test_nope_model_compiles_to_no_sine_or_cosine():
  trig = re.compile(r"\b(sine|cosine)\b")
  assert not trig.search(_hlo(tiny(positions="nope", query_temperature=True)))
  assert trig.search(_hlo(tiny(positions="rope,nope")))


def test_period_params_are_stacked_by_repeats():
  cfg = tiny(positions="rope,rope,rope,nope", num_layers=8)
  spec = config_lib.resolve(cfg)
  assert len(spec.period) == 4 and spec.repeats == 2
  params = jax.eval_shape(lambda: nopejax.init(cfg, jax.random.key(0)))
  assert sorted(params["layers"]) == [f"block_{i}" for i in range(4)]
  for leaf in jax.tree_util.tree_leaves(params["layers"]):
    assert leaf.shape[0] == 2
  assert params["layers"]["block_0"]["attn"]["q"].shape == (2, 32, 4, 8)
  assert params["embedding"].shape == (64, 32)


def test_param_axes_mirror_params():
  cfg = tiny(positions="t5,rope", attn_bias=True, tie_embeddings=False, input_positions="learned")
  params = jax.eval_shape(lambda: nopejax.init(cfg, jax.random.key(0)))
  axes = nopejax.param_axes(cfg)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  assert jax.tree_util.tree_structure(axes, is_leaf=is_spec) == jax.tree_util.tree_structure(params)
  for spec, p in zip(
    jax.tree_util.tree_leaves(axes, is_leaf=is_spec), jax.tree_util.tree_leaves(params)
  ):
    assert len(spec) == p.ndim
  assert tuple(axes["layers"]["block_0"]["attn"]["q"]) == ("layers", "embed", "heads", "head_dim")


# ---------------------------------------------------------------------------------------------
# Config mistakes fail in resolve, naming the key, on one line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides,key",
  [
    (dict(positions="rope,sinusoid"), "model.positions"),
    (dict(windows="sliding"), "model.windows"),
    (dict(windows="window:4"), "model.windows"),
    (dict(positions="rope@sliding:0"), "model.positions"),
    (dict(positions="rope,rope,nope", num_layers=4), "model.positions"),
    (dict(windows="full,sliding:4,full", num_layers=4), "model.windows"),
    (dict(num_heads=4, num_kv_heads=3), "model.num_kv_heads"),
    (dict(num_heads=4, num_kv_heads=8), "model.num_kv_heads"),
    (dict(d_model=30, num_heads=4), "model.d_model"),
    (dict(head_dim=0), "model.head_dim"),
    (dict(positions="rope", rope_fraction=0.375), "model.rope_fraction"),  # 3 of head_dim 8
    (dict(positions="rope", rope_fraction=0.0), "model.rope_fraction"),
    (dict(positions="rope", head_dim=7), "model.rope_fraction"),
    (dict(positions="rope", rope_theta=0.0), "model.rope_theta"),
    (dict(positions="t5", t5_num_buckets=32, t5_max_distance=16), "model.t5_max_distance"),
    (dict(vocab_size=0), "model.vocab_size"),
    (dict(input_positions="rotary"), "model.input_positions"),
    (dict(dtype="fp16"), "model.dtype"),
    (dict(attention_impl="fast"), "model.attention_impl"),
    (dict(attention_impl="xla", positions="alibi", dtype="bfloat16"), "model.attention_impl"),
    (dict(remat="some"), "model.remat"),
  ],
)
def test_config_mistakes_fail_in_resolve(overrides, key):
  with pytest.raises(ValueError) as err:
    config_lib.resolve(tiny(**overrides))
  message = str(err.value)
  assert key in message and "\n" not in message


def test_head_dim_may_be_given_when_d_model_does_not_divide():
  spec = config_lib.resolve(tiny(d_model=30, num_heads=4, head_dim=8, positions="rope"))
  assert spec.head_dim == 8 and spec.rope_dim == 8
  params = params_for(tiny(d_model=30, num_heads=4, head_dim=8))
  assert _forward(tiny(d_model=30, num_heads=4, head_dim=8))(params, _tokens(5)).shape == (1, 5, 64)


@pytest.mark.parametrize("bad", [64, -1])
def test_out_of_range_tokens(bad):
  cfg = tiny()
  params = params_for(cfg)
  tokens = _tokens(6).at[0, 2].set(bad)
  with pytest.raises(ValueError, match=r"tokens: ids must lie in \[0, model.vocab_size=64\)"):
    nopejax.forward(cfg, params, tokens)
  # Under jit ids cannot be checked: the bad token's embedding is NaN, and so is its row (NaN
  # values times zero attention weights stay NaN, so earlier positions are not spared).
  logits = _forward(cfg)(params, tokens)
  assert np.isnan(logits).all()


def test_learned_positions_beyond_max_len_fail_eagerly():
  cfg = tiny(input_positions="learned", max_len=8)
  params = params_for(cfg)
  with pytest.raises(ValueError, match=r"model.max_len=8\), got positions from 0 to 9"):
    nopejax.forward(cfg, params, _tokens(10))
  with pytest.raises(ValueError, match="from -1 to"):
    nopejax.forward(cfg, params, _tokens(4), positions=jnp.arange(4)[None] - 1)


def test_a_config_json_from_0_1_still_resolves():
  """0.1 wrote model.blockwise_above and attention_impl=blockwise, and had no loss_chunk,
  remat_scope or flash_above: a workdir from then still evaluates."""
  old = dict(config_lib.model_config().to_dict(), attention_impl="blockwise", blockwise_above=1000)
  for key in ("flash_above", "loss_chunk", "remat_scope"):
    del old[key]
  spec = config_lib.resolve(ml_collections.ConfigDict(old))
  assert (spec.attention_impl, spec.flash_above, spec.loss_chunk) == ("flash", 1000, 2048)
  assert spec.remat_scope == "period"
