"""RoPE scaling (linear, ntk, dynamic, yarn, llama3): frequencies against hand-computed values,
logit parity with transformers both ways beyond the original length, sliding layers left
unscaled, one training step, and bad values refused in one line."""

import dataclasses
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import checks
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
import transformers

import nopejax
from nopejax import experiment, hf
from nopejax.eval import runner
from nopejax.model import attention
from nopejax.model import spec as spec_lib
from nopejax.model.schemes import rope

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import tiny

jax.config.update("jax_numpy_rank_promotion", "raise")

TOL = 1e-4  # max |logit difference| in fp32
VOCAB = 64
NO_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)


# --------------------------------------------------------------------------- frequencies


def _freqs(rotary_dim, theta, scaling, factor=1.0, original_len=0, **options):
  inv_freq, attn = rope.rope_frequencies(
    rotary_dim, theta, scaling, factor, original_len, **options
  )
  return np.asarray(inv_freq), attn


def test_linear_ntk_and_dynamic_frequencies_by_hand():
  # rotary_dim 4, theta 1e4: unscaled [1, 1e-2].
  np.testing.assert_allclose(_freqs(4, 1e4, "none")[0], [1.0, 1e-2], rtol=1e-6)
  np.testing.assert_allclose(_freqs(4, 1e4, "linear", 2.0)[0], [0.5, 5e-3], rtol=1e-6)
  # ntk: theta * 4^(4/2) = 1.6e5, whose square root is 400.
  np.testing.assert_allclose(_freqs(4, 1e4, "ntk", 4.0)[0], [1.0, 1 / 400], rtol=1e-6)
  # dynamic, factor 2 from 100 tokens: at 200, theta * (2 * 200 / 100 - 1)^2 = 9e4 (sqrt 300).
  long, attn = _freqs(4, 1e4, "dynamic", 2.0, 100, seq_len=jnp.asarray(200))
  np.testing.assert_allclose(long, [1.0, 1 / 300], rtol=1e-6)
  assert attn == 1.0
  for short in (50, 100):  # up to the original length nothing changes
    got, _ = _freqs(4, 1e4, "dynamic", 2.0, 100, seq_len=jnp.asarray(short))
    np.testing.assert_allclose(got, [1.0, 1e-2], rtol=1e-6)


def test_yarn_and_llama3_frequencies_by_hand():
  # rotary_dim 6, theta 1e6: unscaled [1, 1e-2, 1e-4], wavelengths 2 pi times [1, 100, 1e4].
  # YaRN over 1000 tokens: pair i turns 1000 / (2 pi 1e6^(i/3)) times; the ramp's ends are dims
  # 0.348 (32 turns) and 1.101 (1 turn), truncated to 0 and 2.
  inv, attn = _freqs(6, 1e6, "yarn", 4.0, 1000)
  np.testing.assert_allclose(inv, [1.0, 1e-2 * (0.5 / 4 + 0.5), 1e-4 / 4], rtol=1e-6)
  assert attn == pytest.approx(0.1 * np.log(4.0) + 1)
  inv, _ = _freqs(6, 1e6, "yarn", 4.0, 1000, truncate=False)  # ramp from 0.348 to 1.101
  np.testing.assert_allclose(inv, [1.0, 0.0035056479, 1e-4 / 4], rtol=1e-6)
  _, attn = _freqs(6, 1e6, "yarn", 4.0, 1000, mscale=2.0, mscale_all_dim=1.0)
  assert attn == pytest.approx((0.2 * np.log(4.0) + 1) / (0.1 * np.log(4.0) + 1))
  assert _freqs(6, 1e6, "yarn", 4.0, 1000, mscale=2.0, attention_factor=1.5)[1] == 1.5
  # llama3 from 1000 tokens (low 1, high 4): wavelength 2 pi kept, 2 pi 1e4 > 1000 divided by
  # 8, and 2 pi 100 between 250 and 1000 smoothed with s = (1000 / (200 pi) - 1) / 3.
  inv, attn = _freqs(6, 1e6, "llama3", 8.0, 1000, low_freq_factor=1.0, high_freq_factor=4.0)
  np.testing.assert_allclose(inv, [1.0, 0.0029753525, 1e-4 / 8], rtol=1e-6)
  assert attn == 1.0


def test_frequencies_match_transformers_rope_init_functions():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  cases = [
    ("linear", dict(factor=3.0), {}),
    ("yarn", dict(factor=4.0), {}),
    (
      "yarn",
      dict(factor=8.0, beta_fast=16, beta_slow=2, mscale=2.0, mscale_all_dim=1.0, truncate=False),
      dict(beta_fast=16, beta_slow=2, mscale=2.0, mscale_all_dim=1.0, truncate=False),
    ),
    (
      "llama3",
      dict(factor=8.0, low_freq_factor=2.0, high_freq_factor=8.0),
      dict(low_freq_factor=2.0, high_freq_factor=8.0),
    ),
  ]
  for rope_type, params, options in cases:
    params = dict(params, rope_type=rope_type, rope_theta=500.0)
    if rope_type != "linear":
      params["original_max_position_embeddings"] = 16
    config = transformers.LlamaConfig(
      hidden_size=64,
      num_attention_heads=4,
      max_position_embeddings=128,
      rope_parameters=params,
      **NO_TOKENS,
    )
    want, want_attn = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    got, attn = _freqs(16, 500.0, rope_type, params["factor"], 16, **options)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, err_msg=rope_type)
    assert attn == pytest.approx(want_attn)


def _keys(window, positions_BT):
  idx = jnp.arange(positions_BT.shape[1])
  seg = jnp.zeros_like(positions_BT)
  return attention.Keys(idx, idx, positions_BT, positions_BT, seg, seg, window)


def test_sliding_rope_layers_are_not_scaled():
  cfg = _model_cfg(positions="rope", rope_scaling="yarn", rope_scaling_factor=4.0)
  cfg.rope_original_len = 8
  yarn = spec_lib.resolve(cfg)
  plain = dataclasses.replace(yarn, rope_scaling="none")
  q_BTNH = jax.random.normal(jax.random.key(0), (1, 20, 4, 8))
  pos_BT = jnp.arange(20)[None]

  def rotated(spec, window):
    keys = _keys(attention.Window(*window), pos_BT)
    return jax.jit(lambda q: rope.ROPE.queries_keys(None, spec, q, q, keys))(q_BTNH)

  want = rotated(plain, ("full",))
  for got in rotated(yarn, ("sliding", 4)):
    np.testing.assert_array_equal(got, want[0])
  scaled = rotated(yarn, ("full",))
  assert not np.allclose(scaled[0], want[0], atol=1e-3)
  for got in rotated(yarn, ("chunked", 8)):  # chunked layers are scaled, as Llama 4's are
    np.testing.assert_array_equal(got, scaled[0])


# ------------------------------------------------------------------------ nopejax models


def _model_cfg(**overrides):
  cfg = spec_lib.model_config()
  cfg.update(dict(vocab_size=VOCAB, d_model=32, num_layers=4, num_heads=4, num_kv_heads=2, d_ff=64))
  cfg.update(overrides)
  return cfg


def _tokens(length, seed=0):
  return np.random.RandomState(seed).randint(0, VOCAB, (2, length))


_forward = jax.jit(nopejax.forward, static_argnums=0)  # eagerly, a forward takes seconds


def _ours(model_cfg, params, tokens):
  return np.asarray(_forward(spec_lib.resolve(model_cfg), params, jnp.asarray(tokens)))


def _max_diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_a_smollm3_pattern_with_sliding_rope_layers_scales_only_the_full_ones():
  """With the full RoPE layer's queries zeroed (uniform attention whatever its rotation), yarn
  leaves the logits exactly as they are: the sliding RoPE layers were not scaled. Zeroing the
  sliding layers' queries instead, yarn changes them: the full layer was."""
  positions = "rope@sliding:4,rope@sliding:4,rope,nope"
  base = _model_cfg(positions=positions)
  yarn = _model_cfg(
    positions=positions, rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_len=8
  )
  params = checks.random_params(base, spread=0.3)
  tokens = _tokens(24)

  def zero_queries(blocks):
    layers = dict(params["layers"])
    for b in blocks:
      attn = dict(layers[b]["attn"], q=jnp.zeros_like(layers[b]["attn"]["q"]))
      layers[b] = dict(layers[b], attn=attn)
    return dict(params, layers=layers)

  full_off = zero_queries(["block_2"])
  np.testing.assert_allclose(
    _ours(yarn, full_off, tokens), _ours(base, full_off, tokens), atol=1e-6
  )
  sliding_off = zero_queries(["block_0", "block_1"])
  assert _max_diff(_ours(yarn, sliding_off, tokens), _ours(base, sliding_off, tokens)) > 1e-3


def test_a_yarn_model_trains_one_step():
  """Context extension at training time: a gradient step through the public forward (the
  train command's step costs three times as long to compile on a CPU)."""
  cfg = tiny.get_config()
  cfg.model.positions = "rope"
  cfg.model.update(dict(rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_len=8))
  spec = experiment.resolve(cfg).model
  assert (spec.rope_scaling, spec.rope_original_len) == ("yarn", 8)
  tokens = jnp.asarray(_tokens(25) % spec.vocab_size)  # 24 inputs: beyond the original 8

  def loss(params):
    logits = nopejax.forward(spec, params, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def sgd_step(params):
    value, grads = jax.value_and_grad(loss)(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), value, optax.tree.norm(grads)

  params = checks.random_params(cfg.model, spread=0.3)
  new, value, grad_norm = sgd_step(params)
  assert np.isfinite(float(value)) and float(grad_norm) > 0
  assert float(jax.jit(loss)(new)) < float(value)


def test_evaluation_overrides_the_models_scaling_from_its_original_length(tmp_path):
  cfg = tiny.get_config()
  cfg.model.positions = "rope"
  cfg.model.update(dict(rope_scaling="yarn", rope_scaling_factor=2.0, rope_original_len=16))
  cfg.model.update(dict(rope_low_freq_factor=2.0, rope_high_freq_factor=8.0))
  spec = runner.model_spec(experiment.resolve(cfg))
  assert (spec.rope_scaling, spec.rope_scaling_factor) == ("yarn", 2.0)  # none: the model's
  cfg.eval.rope_scaling, cfg.eval.rope_scaling_factor = "llama3", 8.0
  spec = runner.model_spec(experiment.resolve(cfg))
  assert (spec.rope_scaling, spec.rope_scaling_factor, spec.rope_original_len) == (
    "llama3",
    8.0,
    16,
  )
  assert (spec.rope_low_freq_factor, spec.rope_high_freq_factor) == (2.0, 8.0)
  cfg.model.rope_scaling, cfg.model.rope_original_len = "none", 0
  cfg.eval.rope_scaling = "dynamic"
  spec = runner.model_spec(experiment.resolve(cfg))
  assert (spec.rope_scaling, spec.rope_original_len) == ("dynamic", cfg.data.seq_len)


# ------------------------------------------------------------------- transformers parity


def _randomize(model, seed=0):
  """Weights at 1/sqrt(fan_in) and non-trivial norms, so that logits are O(1)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 2:
        p.normal_(0.0, 1.0 if "embed" in name else p.shape[1] ** -0.5)
      else:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model.eval()


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


LLAMA = (transformers.LlamaForCausalLM, transformers.LlamaConfig)
QWEN3 = (transformers.Qwen3ForCausalLM, transformers.Qwen3Config)
SMOL = (transformers.SmolLM3ForCausalLM, transformers.SmolLM3Config)

LOAD_CASES = {
  # name: (classes, config kwargs, expected model keys)
  "llama_llama3": (
    LLAMA,
    dict(
      max_position_embeddings=32,
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=10000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8,
      ),
    ),
    dict(rope_scaling="llama3", rope_original_len=8, rope_scaling_factor=8.0),
  ),
  "llama_dynamic": (
    LLAMA,
    dict(
      max_position_embeddings=8,
      rope_parameters=dict(rope_type="dynamic", rope_theta=100.0, factor=2.0),
    ),
    dict(rope_scaling="dynamic", rope_original_len=8, rope_scaling_factor=2.0),
  ),
  "qwen3_yarn_betas_mscale_untruncated": (
    QWEN3,
    dict(
      hidden_size=64,
      head_dim=16,
      num_hidden_layers=2,
      max_position_embeddings=64,
      rope_parameters=dict(
        rope_type="yarn",
        rope_theta=10.0,
        factor=4.0,
        original_max_position_embeddings=16,
        beta_fast=2.0,
        beta_slow=0.5,
        mscale=2.0,
        mscale_all_dim=1.0,
        truncate=False,
      ),
    ),
    dict(rope_scaling="yarn", yarn_beta_fast=2.0, yarn_beta_slow=0.5, yarn_truncate=False),
  ),
  "smollm3_yarn_nope_layers": (
    SMOL,
    dict(
      max_position_embeddings=32,
      rope_parameters=dict(
        rope_type="yarn",
        rope_theta=1000.0,
        factor=4.0,
        original_max_position_embeddings=8,
        attention_factor=1.3,
      ),
    ),
    dict(rope_scaling="yarn", yarn_attention_factor=1.3, positions="rope,rope,rope,nope"),
  ),
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_imported_scaling_matches_transformers_beyond_the_original_length(case, tmp_path):
  (cls, config_cls), kwargs, expected = LOAD_CASES[case]
  kwargs = dict(
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=4,
      num_attention_heads=4,
      num_key_value_heads=2,
    ),
    **NO_TOKENS,
    **kwargs,
  )
  hf_model = _randomize(cls(config_cls(**kwargs)))
  hf_model.save_pretrained(tmp_path, safe_serialization=True)
  model_cfg, params = hf.load(tmp_path)
  assert {key: model_cfg[key] for key in expected} == expected
  params = jax.tree.map(jnp.asarray, params)
  tokens = _tokens(40)  # beyond every case's original length
  want = _hf_logits(hf_model, tokens)  # a fresh module: dynamic's cached length is this one's
  assert _max_diff(_ours(model_cfg, params, tokens), want) < TOL
  # The scaling is what matched: transformers' own unscaled model is far off.
  theta = kwargs["rope_parameters"]["rope_theta"]
  default = dict(kwargs, rope_parameters=dict(rope_type="default", rope_theta=theta))
  unscaled = cls(config_cls(**default)).eval()
  unscaled.load_state_dict(hf_model.state_dict())
  assert _max_diff(_hf_logits(unscaled, tokens), want) > 1e-2


SAVE_CASES = {
  # name: (model overrides, expected architecture)
  "llama_llama3": (
    dict(
      positions="rope",
      rope_scaling="llama3",
      rope_scaling_factor=8.0,
      rope_original_len=8,
      rope_low_freq_factor=2.0,
      rope_high_freq_factor=8.0,
    ),
    "LlamaForCausalLM",
  ),
  "smollm3_yarn_mscale": (
    dict(
      positions="smollm3",
      rope_theta=1000.0,
      rope_scaling="yarn",
      rope_scaling_factor=4.0,
      rope_original_len=8,
      yarn_beta_fast=8.0,
      yarn_mscale=1.5,
      yarn_mscale_all_dim=0.5,
      yarn_truncate=False,
    ),
    "SmolLM3ForCausalLM",
  ),
  "qwen3_dynamic": (
    dict(
      positions="rope",
      qk_norm=True,
      rope_theta=100.0,
      rope_scaling="dynamic",
      rope_scaling_factor=3.0,
      rope_original_len=8,
    ),
    "Qwen3ForCausalLM",
  ),
}


@pytest.mark.parametrize("case", sorted(SAVE_CASES))
def test_exported_scaling_loads_in_transformers_with_the_same_logits(case, tmp_path):
  overrides, architecture = SAVE_CASES[case]
  model_cfg = _model_cfg(**overrides)
  params = checks.random_params(model_cfg, spread=0.3)
  hf.save(tmp_path, model_cfg, params)
  assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  tokens = _tokens(24)
  assert _max_diff(_hf_logits(hf_model.eval(), tokens), _ours(model_cfg, params, tokens)) < TOL
  # And back: the same scaling.
  again = spec_lib.resolve(hf.load(tmp_path)[0])
  spec = spec_lib.resolve(model_cfg)
  assert rope.scaling_options(again) == rope.scaling_options(spec)


# -------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(rope_scaling="longrope"), "model.rope_scaling: unknown value 'longrope'; allowed: none,"),
    (dict(rope_scaling_factor=0.5), "model.rope_scaling_factor: expected a number >= 1, got 0.5"),
    (dict(rope_scaling_factor=float("nan")), "model.rope_scaling_factor: expected a number >= 1"),
    (
      dict(rope_scaling="yarn", rope_scaling_factor=4.0),
      "model.rope_original_len: model.rope_scal",
    ),
    (dict(rope_scaling="llama3"), "model.rope_original_len: model.rope_scaling=llama3 needs"),
    (dict(rope_original_len=-8), "model.rope_original_len: expected 0 \\(unset\\) or a positive"),
    (
      dict(rope_low_freq_factor=4.0, rope_high_freq_factor=4.0),
      "model.rope_low_freq_factor=4.0 must be below model.rope_high_freq_factor=4.0",
    ),
    (dict(rope_high_freq_factor=0), "model.rope_high_freq_factor: expected a positive number"),
    (
      dict(yarn_beta_fast=1.0, yarn_beta_slow=2.0),
      "model.yarn_beta_fast=1.0 must be at least model.yarn_beta_slow=2.0",
    ),
    (dict(yarn_mscale=-1.0), "model.yarn_mscale: expected a number >= 0"),
    (dict(yarn_attention_factor=0.0), "model.yarn_attention_factor: expected a positive number"),
    (dict(yarn_truncate="yes"), "model.yarn_truncate: expected true or false"),
  ],
)
def test_bad_scaling_values_are_one_line_errors_naming_the_key(overrides, message):
  with pytest.raises(ValueError, match=message) as error:
    # From a dict, as a config.json is read: the ConfigDict's own type checks do not apply.
    spec_lib.resolve(
      ml_collections.ConfigDict({**_model_cfg(positions="rope").to_dict(), **overrides})
    )
  assert "\n" not in str(error.value)


def test_bad_eval_scaling_is_named_and_old_configs_resolve():
  cfg = tiny.get_config()
  cfg.eval.rope_scaling = "longrope"
  with pytest.raises(ValueError, match="eval.rope_scaling: unknown value 'longrope'"):
    experiment.resolve(cfg)
  saved = _model_cfg(positions="rope").to_dict()
  new_keys = ("rope_scaling", "rope_original", "rope_low", "rope_high", "yarn_")
  for key in [k for k in saved if k.startswith(new_keys)]:
    del saved[key]
  spec = spec_lib.resolve(ml_collections.ConfigDict(saved))
  assert rope.scaling_options(spec)["scaling"] == "none"


HF_BASE = dict(
  architectures=["Qwen3ForCausalLM"],
  vocab_size=8,
  hidden_size=8,
  intermediate_size=8,
  num_hidden_layers=2,
  num_attention_heads=2,
  num_key_value_heads=2,
  head_dim=4,
  max_position_embeddings=64,
)
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, rope_theta=100.0)
SLIDING = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)


def test_import_refuses_what_nopejax_would_compute_differently():
  read = hf.model_config_from_hf
  with pytest.raises(ValueError, match="rope_type='longrope' is not supported; supported: default"):
    read({**HF_BASE, "rope_parameters": {"rope_type": "longrope", "short_factor": [1.0]}})
  with pytest.raises(
    ValueError, match="rope_type='llama3' needs low_freq_factor, high_freq_factor"
  ):
    read({**HF_BASE, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}})
  # One rope dict for all layers: transformers would scale the sliding RoPE layer too.
  with pytest.raises(ValueError, match="would scale the sliding_attention RoPE layers too"):
    read({**HF_BASE, **SLIDING, "rope_parameters": YARN})
  assert read({**HF_BASE, **SLIDING}).positions == "rope,rope@sliding:4"  # unscaled: fine
  # Per layer type, as nopejax has it: scaled full layers, default sliding ones.
  nested = {"full_attention": YARN, "sliding_attention": {"rope_type": "default"}}
  cfg = read({**HF_BASE, **SLIDING, "rope_theta": 100.0, "rope_parameters": nested})
  assert (cfg.positions, cfg.rope_scaling, cfg.rope_theta) == ("rope,rope@sliding:4", "yarn", 100.0)
  with pytest.raises(ValueError, match="sliding_attention.rope_type='yarn'; nopejax leaves"):
    read({**HF_BASE, **SLIDING, "rope_parameters": {**nested, "sliding_attention": YARN}})
  with pytest.raises(ValueError, match="rope_theta \\[100.0, 10000.0\\]"):
    read({**HF_BASE, **SLIDING, "rope_parameters": nested})
  # SmolLM3's default sliding layers are its NoPE layers: nothing to scale there.
  smol = {**HF_BASE, "architectures": ["SmolLM3ForCausalLM"], "num_hidden_layers": 4}
  cfg = read({**smol, "use_sliding_window": True, "sliding_window": 4, "rope_parameters": YARN})
  assert (cfg.positions, cfg.rope_scaling) == ("rope,rope,rope,nope@sliding:4", "yarn")


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(rope_scaling="ntk", rope_scaling_factor=2.0), "model.rope_scaling=ntk: transformers has"),
    (
      dict(positions="rnope_swa:4", rope_scaling="linear", rope_scaling_factor=2.0),
      "model.rope_scaling=linear: transformers' one rope_parameters would scale the sliding",
    ),
  ],
)
def test_export_refuses_scaling_transformers_would_compute_differently(
  overrides, message, tmp_path
):
  model_cfg = _model_cfg(**{"positions": "rope", **overrides})
  with pytest.raises(ValueError, match=message) as error:
    hf.save(tmp_path / "out", model_cfg, {})
  assert "\n" not in str(error.value)
  assert not os.path.exists(tmp_path / "out")
