"""Hugging Face interop: logit parity with transformers both ways, refusals, params_io, CLI."""

import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import checks
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors import numpy as st_numpy

import nopejax
from nopejax import hf
from nopejax.model import spec as spec_lib
from nopejax.train import params_io

TOL = 1e-4  # max |logit difference| in fp32
VOCAB = 96
NO_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)


def _randomize(model, seed):
  """Weights at 1/sqrt(fan_in) so logits are O(1), and non-trivial norms and biases.

  transformers' own init (std 0.02, unit norms, zero biases) would make a wrong mapping of
  norms, biases or positions almost invisible in the logits.
  """
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("o_proj.bias"):
        p.zero_()  # nopejax has no output-projection bias
      elif p.ndim == 2:
        p.normal_(0.0, 1.0 if "embed" in name else p.shape[1] ** -0.5)
      elif "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return model.eval()


def _hf_model(cls, config_cls, seed=0, **kwargs):
  kwargs = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    **NO_TOKENS,
    **kwargs,
  }
  return _randomize(cls(config_cls(**kwargs)), seed)


def _tokens(seed=0, length=16):
  return np.random.RandomState(seed).randint(0, VOCAB, (2, length))


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def _our_logits(model_cfg, params, tokens):
  # jnp.asarray: see the note in the report on model._lookup and numpy params.
  return np.asarray(nopejax.forward(model_cfg, jax.tree.map(jnp.asarray, params), tokens))


def _max_diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


SMOL = (transformers.SmolLM3ForCausalLM, transformers.SmolLM3Config)
LLAMA = (transformers.LlamaForCausalLM, transformers.LlamaConfig)
QWEN2 = (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)
QWEN3 = (transformers.Qwen3ForCausalLM, transformers.Qwen3Config)

LOAD_CASES = {
  # name: (classes, config kwargs, expected model.positions)
  "smollm3_4_layers_gqa_tied": (SMOL, dict(num_key_value_heads=2), "rope,rope,rope,nope"),
  "smollm3_8_layers_untied": (
    SMOL,
    dict(num_hidden_layers=8, num_key_value_heads=4, tie_word_embeddings=False),
    "rope,rope,rope,nope",
  ),
  "smollm3_custom_no_rope_layers": (
    SMOL,
    dict(
      no_rope_layers=[0, 1, 1, 0],
      num_key_value_heads=1,
      rope_parameters={"rope_type": "default", "rope_theta": 50.0},
    ),
    "nope,rope,rope,nope",
  ),
  "smollm3_sliding_nope_layers": (
    SMOL,
    dict(
      no_rope_layer_interval=2, use_sliding_window=True, sliding_window=3, num_key_value_heads=2
    ),
    "rope,nope@sliding:3",
  ),
  "smollm3_sliding_rope_layers_biases": (
    SMOL,
    dict(
      no_rope_layers=[1, 1, 1, 0],
      use_sliding_window=True,
      sliding_window=4,
      layer_types=["sliding_attention"] * 3 + ["full_attention"],
      attention_bias=True,
      mlp_bias=True,
      _attn_implementation="eager",
    ),
    "rope@sliding:4,rope@sliding:4,rope@sliding:4,nope",
  ),
  "llama_gqa_untied_head_dim": (
    LLAMA,
    dict(num_key_value_heads=2, head_dim=16, num_hidden_layers=3, rms_norm_eps=1e-5),
    "rope",
  ),
  "llama_tied_biases_theta": (
    LLAMA,
    dict(
      tie_word_embeddings=True,
      attention_bias=True,
      mlp_bias=True,
      num_hidden_layers=2,
      rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    ),
    "rope",
  ),
  "qwen2_sliding_upper_layers": (
    QWEN2,
    dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=5, max_window_layers=2),
    "rope,rope,rope@sliding:5,rope@sliding:5",
  ),
  "qwen3_qk_norm_gqa": (QWEN3, dict(num_key_value_heads=1, head_dim=8), "rope"),
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_load_matches_transformers_logits(case, tmp_path):
  classes, kwargs, positions = LOAD_CASES[case]
  model = _hf_model(*classes, **kwargs)
  model.save_pretrained(tmp_path, safe_serialization=True)
  model_cfg, params = hf.load(tmp_path)
  assert model_cfg.positions == positions
  spec_lib.resolve(model_cfg)
  abstract = jax.eval_shape(lambda: nopejax.init(model_cfg, jax.random.key(0)))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
    lambda a: (a.shape, a.dtype), params
  ), "params differ from nopejax.init's layout"
  tokens = _tokens()
  want = _hf_logits(model, tokens)
  assert np.abs(want).max() > 1.0  # the check below means something
  assert _max_diff(_our_logits(model_cfg, params, tokens), want) < TOL


def test_the_positional_mapping_is_what_parity_depends_on(tmp_path):
  """Reading a NoPE layer as RoPE, or dropping a window, changes the logits far beyond TOL."""
  model = _hf_model(*SMOL, no_rope_layer_interval=2, use_sliding_window=True, sliding_window=3)
  model.save_pretrained(tmp_path, safe_serialization=True)
  model_cfg, params = hf.load(tmp_path)
  tokens = _tokens()
  want = _hf_logits(model, tokens)
  for wrong in ("rope,nope", "rope,nope@sliding:4", "nope@sliding:3,rope"):
    wrong_cfg = spec_lib.model_config()
    wrong_cfg.update(model_cfg.to_dict())
    wrong_cfg.positions = wrong
    assert _max_diff(_our_logits(wrong_cfg, params, tokens), want) > 1e-2, wrong


def test_sharded_checkpoint_loads(tmp_path):
  model = _hf_model(*SMOL, num_key_value_heads=2, tie_word_embeddings=False)
  model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
  model_cfg, params = hf.load(tmp_path)
  tokens = _tokens(1)
  assert _max_diff(_our_logits(model_cfg, params, tokens), _hf_logits(model, tokens)) < TOL


def test_bf16_checkpoint_loads_into_the_configured_dtype(tmp_path):
  model = _hf_model(*LLAMA, num_key_value_heads=2).to(torch.bfloat16)
  model.save_pretrained(tmp_path, safe_serialization=True)
  model_cfg, params = hf.load(tmp_path)
  assert model_cfg.param_dtype == "float32"
  assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  fp32 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  tokens = _tokens(2)
  assert _max_diff(_our_logits(model_cfg, params, tokens), _hf_logits(fp32, tokens)) < TOL
  bf16_cfg, bf16_params = hf.load(tmp_path, dtype="bfloat16")
  assert bf16_cfg.param_dtype == "bfloat16"
  assert {a.dtype for a in jax.tree.leaves(bf16_params)} == {np.dtype(jnp.bfloat16)}
  # bf16 -> bf16 is exact: the same bits as the checkpoint.
  np.testing.assert_array_equal(bf16_params["embedding"].astype(np.float32), params["embedding"])


def _nopejax_model(seed=0, **overrides):
  """A model config and random params in nopejax.init's layout.

  Random rather than init's (unit norm scales and zero biases would hide mapping errors), and
  drawn in numpy from eval_shape: an eager flax init costs seconds per config.
  """
  model_cfg = spec_lib.model_config()
  model_cfg.update(
    dict(
      vocab_size=VOCAB,
      d_model=32,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      d_ff=64,
      rope_theta=1000.0,
      norm_eps=1e-5,
    )
  )
  model_cfg.update(overrides)
  return model_cfg, checks.random_params(model_cfg, seed)


SAVE_CASES = {
  # name: (model overrides, expected architecture)
  "smollm3_gqa_untied": (dict(positions="smollm3", tie_embeddings=False), "SmolLM3ForCausalLM"),
  "rnope_swa_sliding_rope": (dict(positions="rnope_swa:5"), "SmolLM3ForCausalLM"),
  "nope_first_head_dim": (
    dict(positions="nope,rope", head_dim=16, num_kv_heads=1),
    "SmolLM3ForCausalLM",
  ),
  "llama_with_biases": (dict(positions="rope", attn_bias=True, mlp_bias=True), "LlamaForCausalLM"),
  "qwen3_qk_norm_sliding": (
    dict(positions="rope", qk_norm=True, windows="full,sliding:4"),
    "Qwen3ForCausalLM",
  ),
}


@pytest.mark.parametrize("case", sorted(SAVE_CASES))
def test_save_loads_in_transformers_with_the_same_logits(case, tmp_path):
  overrides, architecture = SAVE_CASES[case]
  model_cfg, params = _nopejax_model(**overrides)
  hf.save(tmp_path, model_cfg, params)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["architectures"] == [architecture]
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  assert type(model).__name__ == architecture
  tokens = _tokens(3)
  want = _our_logits(model_cfg, params, tokens)
  assert _max_diff(_hf_logits(model.eval(), tokens), want) < TOL
  # And back: the same function and the same params, bit for bit.
  again_cfg, again = hf.load(tmp_path)
  assert spec_lib.resolve(again_cfg).layers == spec_lib.resolve(model_cfg).layers
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_missing_or_malformed_config_json(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    hf.load(tmp_path)
  (tmp_path / "config.json").write_text(
    json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "num_hidden_layers": 2})
  )
  with pytest.raises(ValueError, match="hidden_size"):
    hf.load(tmp_path)


def test_unsupported_architecture_and_rope_types_are_named(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(ValueError, match="GPT2LMHeadModel"):
    hf.load(tmp_path)
  base = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=8,
    hidden_size=8,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
  )
  with pytest.raises(ValueError, match="rope_type='llama3'"):
    hf.model_config_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "factor": 8}})
  with pytest.raises(ValueError, match="hidden_act='gelu'"):
    hf.model_config_from_hf({**base, "hidden_act": "gelu"})
  with pytest.raises(ValueError, match="rope_parameters per layer type"):
    hf.model_config_from_hf({**base, "rope_parameters": {"full_attention": {"rope_theta": 1.0}}})
  # transformers 4.x configs keep rope_theta at the top level; the class default fills a gap.
  assert hf.model_config_from_hf({**base, "rope_theta": 123.0}).rope_theta == 123.0
  assert (
    hf.model_config_from_hf(
      {**base, "architectures": ["SmolLM3ForCausalLM"], "num_key_value_heads": 2}
    ).rope_theta
    == 2e6
  )


def _saved_tensors(tmp_path):
  model = _hf_model(*LLAMA, num_hidden_layers=2, num_key_value_heads=2)
  model.save_pretrained(tmp_path, safe_serialization=True)
  return st_numpy.load_file(tmp_path / "model.safetensors")


def test_a_tensor_with_the_wrong_shape_is_named_with_the_expected_shape(tmp_path):
  tensors = _saved_tensors(tmp_path)
  tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
  st_numpy.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(
    ValueError,
    match=r"model\.layers\.1\.self_attn\.k_proj\.weight has shape "
    r"\(8, 32\), expected \(16, 32\)",
  ):
    hf.load(tmp_path)


def test_a_missing_tensor_is_named_with_its_shape(tmp_path):
  tensors = _saved_tensors(tmp_path)
  del tensors["model.layers.0.mlp.up_proj.weight"]
  st_numpy.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(
    ValueError,
    match=r"missing tensor model\.layers\.0\.mlp\.up_proj\.weight "
    r"\(expected shape \(64, 32\)\)",
  ):
    hf.load(tmp_path)


def test_unexpected_tensors_and_nonzero_output_bias_are_refused(tmp_path):
  tensors = _saved_tensors(tmp_path)
  tensors["model.layers.0.self_attn.o_proj.bias"] = np.ones((32,), np.float32)
  st_numpy.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match="unexpected tensors.*o_proj.bias"):
    hf.load(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
  with pytest.raises(ValueError, match="missing tensor model.layers.0.self_attn.q_proj.bias"):
    hf.load(tmp_path)


@pytest.mark.parametrize(
  "overrides,key",
  [
    (dict(positions="alibi"), "model.positions"),
    (dict(positions="rope,t5"), "model.positions"),
    (dict(positions="llama4:8"), "model.positions/model.windows"),
    (dict(positions="rope", input_positions="learned"), "model.input_positions"),
    (dict(positions="nope", query_temperature=True), "model.query_temperature"),
    (dict(positions="rope", rope_fraction=0.25), "model.rope_fraction"),
    (dict(positions="rope", windows="sliding:4,sliding:8"), "model.positions/model.windows"),
    (dict(positions="nope,rope", qk_norm=True), "model.qk_norm"),
  ],
)
def test_save_refuses_what_transformers_cannot_express(overrides, key, tmp_path):
  model_cfg = spec_lib.model_config()
  model_cfg.update(overrides)
  with pytest.raises(ValueError, match=key.replace(".", r"\.")) as error:
    hf.save(tmp_path / "out", model_cfg, {})
  assert "\n" not in str(error.value)
  assert not os.path.exists(tmp_path / "out")


def test_params_io_round_trip_into_numpy_and_into_an_abstract_target(tmp_path):
  model_cfg, params = _nopejax_model(positions="smollm3")
  params_io.save_params(tmp_path / "params", params)
  with pytest.raises(FileExistsError):
    params_io.save_params(tmp_path / "params", params)
  restored = params_io.load_params(tmp_path / "params")
  assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(restored))
  jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(params))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = jax.eval_shape(lambda: nopejax.init(model_cfg, jax.random.key(0)))
  target = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, jnp.bfloat16, sharding=sharding), abstract
  )
  restored = params_io.load_params(tmp_path / "params", target)
  assert {a.dtype for a in jax.tree.leaves(restored)} == {jnp.dtype(jnp.bfloat16)}
  assert all(a.sharding == sharding for a in jax.tree.leaves(restored))
  wrong = dict(abstract, embedding=jax.ShapeDtypeStruct((3, 32), jnp.float32))
  with pytest.raises(ValueError, match=r"\['embedding'\] has shape \(96, 32\)"):
    params_io.load_params(tmp_path / "params", wrong)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "nopejax.hf", *map(str, args)],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_import_then_export_round_trip(tmp_path):
  model = _hf_model(*SMOL, num_key_value_heads=2, tie_word_embeddings=False)
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  workdir, out = tmp_path / "work", tmp_path / "exported"
  result = _cli("import", f"--hf_dir={tmp_path / 'hf'}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr
  assert json.loads((workdir / "model_config.json").read_text())["positions"] == (
    "rope,rope,rope,nope"
  )
  result = _cli("export", f"--workdir={workdir}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  tokens = _tokens(4)
  assert _max_diff(_hf_logits(exported.eval(), tokens), _hf_logits(model, tokens)) < TOL


def test_cli_bad_verb_and_missing_flags_are_one_line_errors(tmp_path):
  result = _cli("convert", "--workdir=x")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
    "nopejax.hf: expected one verb, import or export; got 'convert'"
  ]
  result = _cli("export", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == ["nopejax.hf export: missing --out"]


def test_fine_tuning_from_imported_weights_through_the_train_command(tmp_path):
  """hf import, then two training steps from those weights: fine-tuning is a config change."""
  model = _hf_model(*SMOL, vocab_size=288, num_key_value_heads=2)  # covers the 259 byte ids
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  init = tmp_path / "init"
  assert _cli("import", f"--hf_dir={tmp_path / 'hf'}", f"--workdir={init}").returncode == 0
  workdir = tmp_path / "ft"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "nopejax.train",
      f"--config=configs/finetune.py:init_from={init},steps=2",
      f"--workdir={workdir}",
      "--config.data.seq_len=32",
      "--config.data.batch_size=2",
      f"--config.data.data_dir={tmp_path / 'data'}",
      "--config.train.progress=False",
    ],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  assert row["step"] == 2 and np.isfinite(row["loss"])  # (the first step of warmup has lr 0)
  # The step started from the imported weights, not a random init: before the update the
  # model is the HF one, so the first loss is its loss (not log(288) of a fresh model).
  imported = params_io.load_params(init / "params")
  trained = params_io.load_params(workdir / "params")
  drift = max(_max_diff(a, b) for a, b in zip(jax.tree.leaves(imported), jax.tree.leaves(trained)))
  assert 0 < drift < 1e-3  # a small fine-tuning step away from the imported weights


# ------------------------------------------------------------------------------ gs:// buckets


def test_load_and_save_a_bucket_directory(gcs_bucket, tmp_path):
  """hf.load reads a sharded checkpoint from gs:// (headers, then tensors by offset); hf.save
  writes config.json and model.safetensors there."""
  from nopejax import storage

  model = _hf_model(*SMOL, num_key_value_heads=2, tie_word_embeddings=False)
  model.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="20KB")
  storage.copy_tree(tmp_path / "hf", f"{gcs_bucket.url}/sharded")
  model_cfg, params = hf.load(f"{gcs_bucket.url}/sharded")
  tokens = _tokens(5)
  assert _max_diff(_our_logits(model_cfg, params, tokens), _hf_logits(model, tokens)) < TOL
  hf.save(f"{gcs_bucket.url}/saved", model_cfg, params)
  assert sorted(gcs_bucket.objects("saved/")) == ["saved/config.json", "saved/model.safetensors"]
  storage.copy_tree(f"{gcs_bucket.url}/saved", tmp_path / "saved")
  saved = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
  assert _max_diff(_hf_logits(saved.eval(), tokens), _hf_logits(model, tokens)) < TOL
  with pytest.raises(FileNotFoundError, match="config.json: missing"):
    hf.load(f"{gcs_bucket.url}/nothing_here")


def test_cli_import_from_and_export_to_a_bucket(gcs_bucket, tmp_path):
  """`nopejax.hf import` from a gs:// HF directory into a gs:// workdir, then `export` to gs://:
  transformers loads the result with the original logits, and no local `gs:` directory appears."""
  from conftest import no_local_gs_dir

  from nopejax import storage

  model = _hf_model(*SMOL, num_key_value_heads=2, tie_word_embeddings=False)
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # copied as bytes, not parsed
  storage.copy_tree(tmp_path / "hf", f"{gcs_bucket.url}/hf_in")
  cwd = tmp_path / "cwd"
  cwd.mkdir()

  def cli(*args):
    return subprocess.run(
      [sys.executable, "-m", "nopejax.hf", *args],
      cwd=cwd,
      env=dict(os.environ, JAX_PLATFORMS="cpu", **gcs_bucket.env),
      capture_output=True,
      text=True,
      timeout=300,
    )

  wd, out = f"{gcs_bucket.url}/wd", f"{gcs_bucket.url}/hf_out"
  result = cli("import", f"--hf_dir={gcs_bucket.url}/hf_in", f"--workdir={wd}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert gcs_bucket.objects("wd/params")
  assert {"wd/model_config.json", "wd/tokenizer.json"} <= set(gcs_bucket.objects("wd/"))
  assert storage.read_json(f"{wd}/model_config.json")["positions"] == "rope,rope,rope,nope"
  result = cli("export", f"--workdir={wd}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  storage.copy_tree(out, tmp_path / "hf_out")
  exported = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path / "hf_out", dtype=torch.float32
  )
  tokens = _tokens(6)
  assert _max_diff(_hf_logits(exported.eval(), tokens), _hf_logits(model, tokens)) < TOL
  no_local_gs_dir(tmp_path, "/work/main")


# -------------------------------------------------------- RoPE scaling and query scaling


@pytest.mark.parametrize(
  "overrides", [dict(positions="rope", query_scaling="ssmax"), dict(query_scaling="headscale")]
)
def test_save_refuses_query_scaling(overrides, tmp_path):
  model_cfg = spec_lib.model_config()
  model_cfg.update(overrides)
  with pytest.raises(
    ValueError, match=r"model\.query_scaling: layer 0 scales its queries"
  ) as error:
    hf.save(tmp_path / "out", model_cfg, {})
  assert "\n" not in str(error.value)
  assert not os.path.exists(tmp_path / "out")


def test_rope_scaling_in_the_transformers_4_layout_is_read_and_written():
  base = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=8,
    hidden_size=8,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
  )
  cfg = hf.model_config_from_hf(
    {**base, "rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
  )
  assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_scaling_factor) == (500.0, "linear", 2.0)
  written = hf.hf_config(spec_lib.resolve(cfg), "llama", np.float32)
  assert written["rope_parameters"] == {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}
  assert written["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}  # where 4.x reads it
  assert "rope_scaling" not in hf.hf_config(
    spec_lib.resolve(spec_lib.model_config()), "llama", "f4"
  )
