"""The research-frontier schemes (FIRE, KERPLE, xPos, CoPE, p-RoPE), query scalings (SSMax, a
scale per head) and the shared T5 table: hand-computed values, causality by gradients, shift
invariance where a scheme has it, KV-cache decoding, the flash path, and one-line errors."""

import math

import checks
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nopejax
from nopejax.hf import config as hf_config
from nopejax.model import attention, decoder
from nopejax.model import generate as decode
from nopejax.model import spec as config_lib
from nopejax.model.schemes import cope, fire, kerple, prope, rope, scaling, xpos

jax.config.update("jax_numpy_rank_promotion", "raise")

NEW = ("fire", "kerple_log", "kerple_power", "xpos", "cope", "prope")
WINDOWS = ("full", "sliding:3", "chunked:4")


def tiny(**overrides):
  cfg = config_lib.model_config()
  cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.d_ff = 64, 32, 2, 64
  cfg.num_heads, cfg.num_kv_heads = 4, 2
  cfg.t5_num_buckets, cfg.t5_max_distance = 8, 16
  cfg.fire_mlp_width, cfg.fire_threshold, cfg.cope_npos_max = 8, 16, 8
  cfg.block_size = 5  # divides none of the test lengths
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def every_new_scheme(**overrides):
  """One layer of each new scheme, the query scalings tiled over them."""
  return tiny(
    positions=",".join(NEW), num_layers=6, query_scaling="ssmax,headscale,none", **overrides
  )


def jit(fn):
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def init(cfg, seed=0):
  """Fresh params with the zero-initialized ones (CoPE's embeddings, biases) made random, so
  every term of every scheme is live."""
  params = jit(lambda rng: nopejax.init(cfg, rng))(jax.random.key(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [
    x + 0.3 * jax.random.normal(k, x.shape) if not np.asarray(x).any() else x
    for x, k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(tree, leaves)


def _tokens(T, B=1, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, 64)


# ---------------------------------------------------------------------------------------------
# Values against hand-computed ones
# ---------------------------------------------------------------------------------------------


def test_fire_bias_is_the_mlp_of_the_progressively_normalized_distance():
  params = {
    "w1": jnp.asarray([1.0, -2.0]),
    "b1": jnp.asarray([0.5, 1.0]),
    "w2": jnp.asarray([[1.0, 0.0, 2.0], [3.0, 1.0, -1.0]]),
    "b2": jnp.asarray([0.0, 0.25, -0.5]),
    "c": jnp.asarray(0.1),
    "l": jnp.asarray(2.0),
  }
  q_pos, k_pos = jnp.asarray([[3, 40]]), jnp.asarray([[0, 3, 25]])
  got = np.asarray(fire.fire_bias(params, q_pos, k_pos, threshold=8.0))  # L = 2 * 8 = 16
  for a, i in enumerate((3, 40)):
    for b, j in enumerate((0, 3, 25)):
      x = math.log(0.1 * max(i - j, 0) + 1) / math.log(0.1 * max(16, i) + 1)
      x = min(max(x, 0.0), 1.0)
      hidden = np.maximum(x * np.array([1.0, -2.0]) + np.array([0.5, 1.0]), 0)
      want = hidden @ np.array([[1.0, 0.0, 2.0], [3.0, 1.0, -1.0]]) + np.array([0, 0.25, -0.5])
      np.testing.assert_allclose(got[0, :, a, b], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["log", "power"])
def test_kerple_kernels(kind):
  params = {"r1": jnp.asarray([0.5, 2.0]), "r2": jnp.asarray([0.3, 3.0])}
  got = np.asarray(
    kerple.kerple_bias(params, jnp.asarray([[7]]), jnp.asarray([[0, 5, 7]]), kind=kind)
  )
  for h, (r1, r2) in enumerate(((0.5, 0.3), (2.0, 3.0))):
    for b, d in enumerate((7, 2, 0)):
      # The power kernel's exponent is capped at 2 (the kernel is CPD only for r2 <= 2).
      want = -r1 * math.log(1 + r2 * d) if kind == "log" else -r1 * d ** min(r2, 2.0)
      np.testing.assert_allclose(got[0, h, 0, b], want, rtol=1e-6, atol=1e-7)


def test_kerple_clamps_its_parameters_positive():
  params = {"r1": jnp.asarray([-1.0]), "r2": jnp.asarray([-3.0])}
  got = kerple.kerple_bias(params, jnp.asarray([[9]]), jnp.asarray([[0]]), kind="log")
  np.testing.assert_allclose(got[0, 0, 0, 0], -0.01 * math.log(1 + 0.01 * 9), rtol=1e-5)


def test_xpos_score_is_rotation_times_decay_of_the_distance():
  """One pair, q = k = (1, 0): the score is cos(m - n) * zeta_0^((m - n) / gamma)."""
  x = jnp.asarray([[[[1.0, 0.0]]]])
  zeta = (0 + 0.4 * 2) / (1.4 * 2)
  for m, n in ((9, 4), (300, 20), (5, 5)):
    q = xpos.xpos(x, jnp.asarray([[m]]), theta=1e4, rotary_dim=2, scale_base=64.0, sign=1.0)
    k = xpos.xpos(x, jnp.asarray([[n]]), theta=1e4, rotary_dim=2, scale_base=64.0, sign=-1.0)
    want = math.cos(m - n) * zeta ** ((m - n) / 64.0)
    np.testing.assert_allclose(float(jnp.sum(q * k)), want, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(xpos.xpos_zeta(8), np.array([3.2, 5.2, 7.2, 9.2]) / 11.2, rtol=1e-6)


def test_xpos_limit_is_where_the_key_scale_overflows():
  top = xpos.max_position(16, 512.0, jnp.float32)
  assert 33_000 < top < 35_000
  for n, finite in ((top, True), (int(top * 1.1), False)):
    k = xpos.xpos(
      jnp.ones((1, 1, 1, 16)),
      jnp.asarray([[n]]),
      theta=1e4,
      rotary_dim=16,
      scale_base=512.0,
      sign=-1.0,
    )
    assert bool(jnp.isfinite(k).all()) == finite
  assert xpos.max_position(16, 512.0, jnp.float16) < 5000


def test_prope_keeps_the_highest_frequencies_and_freezes_the_rest():
  np.testing.assert_allclose(
    prope.prope_frequencies(8, 100.0, 0.5), [1.0, 100**-0.25, 0.0, 0.0], rtol=1e-6
  )
  np.testing.assert_allclose(
    prope.prope_frequencies(8, 100.0, 1.0), rope.rope_frequencies(8, 100.0)[0], rtol=1e-6
  )
  assert not prope.prope_frequencies(8, 100.0, 0.0).any()
  # Not rope_fraction: rotating the first half of the dims recomputes frequencies over them,
  # down to the lowest (100^-1/2 for the second of two pairs, where p-RoPE keeps 100^-1/4).
  assert rope.rope_frequencies(4, 100.0)[0][1] == pytest.approx(0.1)


def test_prope_model_at_p0_is_nope_and_at_p1_is_rope():
  tokens = _tokens(9)
  params = init(tiny(positions="rope"))
  logits = lambda **kw: jit(lambda p: nopejax.forward(tiny(**kw), p, tokens))(params)
  np.testing.assert_allclose(
    logits(positions="prope", prope_fraction=0.0), logits(positions="nope"), atol=1e-6
  )
  np.testing.assert_allclose(
    logits(positions="prope", prope_fraction=1.0), logits(positions="rope"), atol=1e-6
  )
  half = logits(positions="prope", prope_fraction=0.5)
  assert not np.allclose(half, logits(positions="rope"), atol=1e-4)


def _cope_by_hand(q_TH, k_SH, emb_HP):
  """The paper's loops for one head and one row: gates, reverse sums, interpolation."""
  T, npos = q_TH.shape[0], emb_HP.shape[1]
  out = np.zeros((T, T))
  for i in range(T):
    gates = [1 / (1 + math.exp(-q_TH[i] @ k_SH[j])) for j in range(i + 1)]
    for j in range(i + 1):
      p = min(sum(gates[j : i + 1]), npos - 1)
      lo, hi = math.floor(p), math.ceil(p)
      e = (p - lo) * emb_HP[:, hi] + (1 - (p - lo)) * emb_HP[:, lo]
      out[i, j] = q_TH[i] @ e
  return out


def test_cope_positions_count_the_gates_from_each_key_to_the_query():
  T, H, P = 5, 4, 4  # gate sums reach 5 > P - 1: the cap is exercised
  rng = np.random.default_rng(0)
  q_TH, k_SH, emb_HP = rng.normal(size=(T, H)), rng.normal(size=(T, H)), rng.normal(size=(H, P))
  keys = attention.Keys(
    *(jnp.arange(T),) * 2,
    *(jnp.arange(T)[None],) * 2,
    *(jnp.ones((1, T), jnp.int32),) * 2,
    attention.Window(),
  )
  logits = jnp.einsum("th,sh->ts", q_TH, k_SH)[None, None, None]
  got = cope.cope_logits(
    jnp.asarray(emb_HP), jnp.asarray(q_TH)[None, :, None, None], logits, keys.mask(), keys
  )
  causal = np.tril(np.ones((T, T), bool))
  np.testing.assert_allclose(
    np.asarray(got)[0, 0, 0][causal], _cope_by_hand(q_TH, k_SH, emb_HP)[causal], rtol=1e-5
  )
  # The sums follow sequence order, not array order: keys given backwards count the same.
  rev = jnp.arange(T)[::-1]
  keys_rev = attention.Keys(
    keys.q_idx_T,
    rev,
    keys.q_pos_BT,
    keys.k_pos_BS[:, ::-1],
    keys.q_seg_BT,
    keys.k_seg_BS,
    keys.window,
  )
  got_rev = cope.cope_logits(
    jnp.asarray(emb_HP),
    jnp.asarray(q_TH)[None, :, None, None],
    logits[..., ::-1],
    keys_rev.mask(),
    keys_rev,
  )
  np.testing.assert_allclose(got_rev[..., ::-1][0, 0, 0][causal], got[0, 0, 0][causal], rtol=1e-6)


@pytest.mark.parametrize(
  "window,want",
  [("full", [1, 2, 3, 4, 5, 6]), ("sliding", [1, 2, 3, 3, 3, 3]), ("chunked", [1, 2, 3, 1, 2, 3])],
)
def test_ssmax_counts_the_keys_each_query_attends_to(window, want):
  got = scaling.attended_keys(jnp.arange(6)[None], attention.Window(window, 3))
  np.testing.assert_array_equal(got[0], want)


def test_ssmax_and_headscale_scale_queries_by_head():
  cfg = tiny(positions="nope", query_scaling="ssmax,headscale", ssmax_init=0.5)
  spec = config_lib.resolve(cfg)
  params = nopejax.init(cfg, jax.random.key(0))["layers"]
  np.testing.assert_array_equal(params["block_0"]["attn"]["ssmax_s"], np.full((1, 4), 0.5))
  np.testing.assert_array_equal(params["block_1"]["attn"]["head_scale"], np.ones((1, 4)))
  q = jnp.ones((1, 4, 4, 8))
  keys = attention.Keys(
    *(jnp.arange(4),) * 2, *(jnp.arange(4)[None],) * 2, None, None, attention.Window()
  )

  class Holder(nn.Module):
    @nn.compact
    def __call__(self, q):
      return scaling.scale_queries(self, spec, "ssmax", q, keys)

  s_N = jnp.asarray([0.5, 1.0, 2.0, 3.0])
  got = Holder().apply({"params": {"ssmax_s": s_N}}, q)
  want = s_N[None, None, :, None] * jnp.log(jnp.arange(1.0, 5.0))[None, :, None, None]
  np.testing.assert_allclose(got, jnp.broadcast_to(want, q.shape), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Model properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "window,impl", [("full", "reference"), ("sliding:3", "flash"), ("chunked:4", "flash")]
)
def test_causality_by_gradients(window, impl):
  """Every new scheme and scaling in one model: a future token reaching any layer would reach
  the logits. `flash`: auto above 1 token, so every layer but CoPE's takes the flash path."""
  T = 12
  extra = dict(attention_impl="reference") if impl == "reference" else dict(flash_above=1)
  cfg = every_new_scheme(windows=window, tie_embeddings=False, **extra)
  params = init(cfg)
  tokens = jax.random.permutation(jax.random.key(2), cfg.vocab_size)[:T][None]
  jac_TS = checks.input_jacobian_norms(cfg, params, tokens, jit)
  assert (jac_TS[np.triu_indices(T, 1)] == 0).all(), "a token sees the future"
  assert (np.diagonal(jac_TS) > 0).all()
  if window == "full":
    assert (jac_TS[np.tril_indices(T, -1)] > 0).all()


def test_flash_equals_reference_in_values_and_gradients():
  """Packed documents and padding; the bias parameters (FIRE's MLP, KERPLE's r) get their
  gradients through the flash path's custom VJP."""
  tokens = _tokens(17, B=2)
  segment_ids = jnp.asarray([[1] * 9 + [2] * 6 + [0] * 2, [1] * 17])
  targets = _tokens(17, B=2, seed=5)

  def loss(cfg, params):
    logits = nopejax.forward(cfg, params, tokens, segment_ids=segment_ids)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(
      jnp.take_along_axis(logp, targets[..., None], -1) * (segment_ids > 0)[..., None]
    )

  ref_cfg = every_new_scheme(windows="sliding:6", attention_impl="reference")
  params = init(ref_cfg)
  want = jit(jax.value_and_grad(lambda p: loss(ref_cfg, p)))(params)
  flash_cfg = every_new_scheme(windows="sliding:6", flash_above=1)
  spec = config_lib.resolve(flash_cfg)
  assert [decoder.path_for(spec, t, 17) for t in spec.layers] == ["flash"] * 4 + [
    "reference",
    "flash",
  ]
  got = jit(jax.value_and_grad(lambda p: loss(flash_cfg, p)))(params)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-4), got[1], want[1])
  fire_grad = got[1]["layers"]["block_0"]["attn"]["fire_w2"]
  assert np.abs(np.asarray(fire_grad)).max() > 0


def _logits_at(cfg, positions, params=None):
  params = init(cfg) if params is None else params
  return jit(lambda p, pos: nopejax.forward(cfg, p, _tokens(10), positions=pos))(params, positions)


@pytest.mark.parametrize("scheme", ["kerple_log", "kerple_power", "xpos", "prope", "fire"])
def test_relative_schemes_are_shift_invariant(scheme):
  """FIRE too while every query sits below its threshold L (then psi(max(L, i)) is constant)."""
  cfg = tiny(positions=scheme, fire_threshold=512)
  pos = jnp.arange(10)[None]
  np.testing.assert_allclose(_logits_at(cfg, pos + 37), _logits_at(cfg, pos), atol=2e-5)


@pytest.mark.parametrize(
  "overrides",
  [dict(positions="fire"), dict(positions="nope", query_scaling="ssmax")],
  ids=["fire", "ssmax"],
)
def test_position_dependent_schemes_are_not_shift_invariant(overrides):
  """FIRE beyond its threshold normalizes by the query's own position; SSMax scales by log n."""
  cfg = tiny(**overrides)
  pos = jnp.arange(10)[None]
  assert not np.allclose(_logits_at(cfg, pos + 2000), _logits_at(cfg, pos), atol=1e-4)


@pytest.mark.parametrize(
  "overrides",
  [
    dict(positions="nope"),
    dict(positions="cope"),
    dict(positions="nope", query_scaling="headscale"),
  ],
)
def test_content_schemes_ignore_positions(overrides):
  """Plain NoPE too: so NoPE trained with randomized positions is NoPE."""
  cfg = tiny(**overrides)
  scrambled = jax.random.randint(jax.random.key(3), (1, 10), 0, 5000)
  np.testing.assert_allclose(
    _logits_at(cfg, scrambled), _logits_at(cfg, jnp.arange(10)[None]), atol=1e-6
  )


def test_packed_documents_equal_documents_alone():
  cfg = every_new_scheme(windows="sliding:3")
  params = init(cfg)
  docs = _tokens(5, B=3, seed=10)
  tokens = jnp.concatenate([docs.reshape(1, 15), jnp.zeros((1, 2), jnp.int32)], axis=1)
  segment_ids = jnp.asarray([[1] * 5 + [2] * 5 + [3] * 5 + [0] * 2])
  forward = jit(lambda p, t, s: nopejax.forward(cfg, p, t, segment_ids=s))
  packed = forward(params, tokens, segment_ids)
  alone = jit(lambda p, t: nopejax.forward(cfg, p, t))(params, docs)
  np.testing.assert_allclose(packed[0, :15].reshape(3, 5, -1), alone, atol=1e-5, rtol=1e-5)


def recompute_greedy(cfg, params, prompt, steps, width=24):
  forward = jit(lambda p, t: nopejax.forward(cfg, p, t))
  tokens = list(prompt)
  for _ in range(steps):
    padded = np.zeros((1, width), np.int32)
    padded[0, : len(tokens)] = tokens
    tokens.append(int(np.argmax(forward(params, padded)[0, len(tokens) - 1])))
  return tokens[len(prompt) :]


@pytest.mark.parametrize("window", WINDOWS)
def test_cached_greedy_equals_recompute(window):
  """Prompts of 3, 7 and 5 tokens and 9 new ones: every row passes the windows, so ring slots
  are overwritten (CoPE must still sum its gates in sequence order)."""
  cfg = every_new_scheme(windows=window)
  params = init(cfg, seed=1)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 64, n).tolist() for n in (3, 7, 5)]
  got = decode.generate(cfg, params, prompts, 9, multiple=4)
  assert got.tolist() == [recompute_greedy(cfg, params, p, 9) for p in prompts]


# ---------------------------------------------------------------------------------------------
# The shared T5 table
# ---------------------------------------------------------------------------------------------


def test_shared_t5_table_is_one_table_whose_gradient_sums_the_layers():
  per_layer = tiny(positions="t5,nope,t5", num_layers=3)
  shared = tiny(positions="t5,nope,t5", num_layers=3, t5_shared=True)
  p_shared = init(shared)
  assert p_shared["t5_bias"].shape == (8, 4)
  assert not any(
    "t5_bias" in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(p_shared["layers"])
  )
  # The same model with each layer's own table set to the shared one.
  p_layers = jax.tree.map(lambda x: x, {k: v for k, v in p_shared.items() if k != "t5_bias"})
  for block in ("block_0", "block_2"):
    p_layers["layers"][block]["attn"]["t5_bias"] = p_shared["t5_bias"][None]
  tokens = _tokens(11)
  loss = lambda cfg: jit(
    jax.value_and_grad(lambda p: jnp.mean(nopejax.forward(cfg, p, tokens) ** 2))
  )
  want_loss, want_grads = loss(per_layer)(p_layers)
  got_loss, got_grads = loss(shared)(p_shared)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  layers = want_grads["layers"]
  summed = layers["block_0"]["attn"]["t5_bias"][0] + layers["block_2"]["attn"]["t5_bias"][0]
  np.testing.assert_allclose(got_grads["t5_bias"], summed, rtol=1e-5, atol=1e-8)


def test_shared_t5_table_decodes_with_the_cache():
  cfg = tiny(positions="t5@sliding:3,t5", num_layers=4, t5_shared=True)
  params = init(cfg, seed=2)
  prompts = [[5, 9, 2], [7, 1, 1, 3, 8]]
  got = decode.generate(cfg, params, prompts, 6, multiple=4)
  assert got.tolist() == [recompute_greedy(cfg, params, p, 6) for p in prompts]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides,match",
  [
    (dict(positions="fire", fire_threshold=0), "model.fire_threshold: expected a positive number"),
    (
      dict(positions="fire", fire_mlp_width=0),
      "model.fire_mlp_width: expected a positive integer",
    ),
    (dict(positions="xpos", xpos_scale_base=-1.0), "model.xpos_scale_base: expected a positive"),
    (dict(positions="cope", cope_npos_max=1), "model.cope_npos_max: expected an integer >= 2"),
    (
      dict(positions="cope,rope", attention_impl="flash"),
      "model.attention_impl=flash: cope layers",
    ),
    (
      dict(positions="prope", prope_fraction=1.5),
      r"model.prope_fraction: expected a share in \[0, 1\]",
    ),
    (dict(query_scaling="temperature"), "model.query_scaling: unknown 'temperature'"),
    (dict(query_scaling="ssmax,none,none"), "model.query_scaling: a period of 3 layers"),
    (dict(query_scaling="ssmax", ssmax_init=0.0), "model.ssmax_init: expected a positive number"),
  ],
)
def test_bad_parameters_are_one_line_errors(overrides, match):
  with pytest.raises(ValueError, match=match) as err:
    config_lib.resolve(tiny(**overrides))
  assert "\n" not in str(err.value)


def test_xpos_refuses_lengths_its_dtype_cannot_hold():
  spec = config_lib.resolve(tiny(positions="xpos", dtype="float16", xpos_scale_base=64.0))
  spec.check_length(200, "data.seq_len=200")
  with pytest.raises(
    ValueError, match=r"data.seq_len=4000 needs 4000 positions but xPos's key scale"
  ):
    spec.check_length(4000, "data.seq_len=4000")


@pytest.mark.parametrize("scheme", NEW)
def test_schemes_transformers_lacks_are_refused_on_export(scheme):
  spec = config_lib.resolve(tiny(positions=f"rope,{scheme}"))
  with pytest.raises(ValueError, match=f"model.positions: layer 1 is '{scheme}'"):
    hf_config.check_expressible(spec)
