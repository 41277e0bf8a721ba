"""transformers config.json <-> the nopejax `model` group, both ways.

Reading follows how transformers 5.x builds each layer from config.json (class defaults fill keys
a hand-written config omits); writing picks the architecture that expresses a model. The mapping
choices are listed in the `nopejax.hf` docstring.
"""

import json

import numpy as np

from nopejax import storage
from nopejax.model import patterns
from nopejax.model import spec as spec_lib

ARCHITECTURES = {
  "LlamaForCausalLM": "llama",
  "SmolLM3ForCausalLM": "smollm3",
  "Qwen2ForCausalLM": "qwen2",
  "Qwen3ForCausalLM": "qwen3",
}
# transformers 5.x class defaults of the keys that change the function, for config.json files
# that omit them (save_pretrained writes them all; hand-written configs may not).
_DEFAULTS = {
  "llama": dict(
    num_key_value_heads=None,
    head_dim=None,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
  ),
  "smollm3": dict(
    num_key_value_heads=4,
    head_dim=None,
    rope_theta=2000000.0,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    use_sliding_window=False,
    sliding_window=None,
    no_rope_layer_interval=4,
  ),
  "qwen2": dict(
    num_key_value_heads=32,
    head_dim=None,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    max_position_embeddings=32768,
    use_sliding_window=False,
    sliding_window=4096,
    max_window_layers=28,
  ),
  "qwen3": dict(
    num_key_value_heads=32,
    head_dim=128,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    max_position_embeddings=32768,
    use_sliding_window=False,
    sliding_window=4096,
    max_window_layers=28,
  ),
}
_COMMON_DEFAULTS = dict(rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False, mlp_bias=False)
_REQUIRED = (
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
)


# ------------------------------------------------------------------------------------ read


def _read_config(directory):
  path = storage.path(directory) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing; expected a Hugging Face model directory")
  try:
    hf = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(hf).__name__}")
  return hf


def _architecture(hf, where):
  names = hf.get("architectures") or []
  name = names[0] if names else hf.get("model_type")
  by_model_type = {v: v for v in ARCHITECTURES.values()}
  arch = ARCHITECTURES.get(name) or by_model_type.get(name)
  if arch is None:
    raise ValueError(
      f"{where}: unsupported architecture {name!r}; supported: {', '.join(ARCHITECTURES)}"
    )
  return arch


# transformers rope_type -> model.rope_scaling ("default" is unscaled RoPE; "type" is 4.x's key).
_ROPE_TYPES = {
  "default": "none",
  "linear": "linear",
  "dynamic": "dynamic",
  "yarn": "yarn",
  "llama3": "llama3",
}
# Keys transformers' _check_received_keys requires (a missing one is a KeyError there).
_ROPE_REQUIRED = {
  "linear": ("factor",),
  "dynamic": ("factor",),
  "yarn": ("factor",),
  "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}
_LAYER_KINDS = ("full_attention", "sliding_attention")


def _rope_type(params):
  return params.get("rope_type", params.get("type", "default"))


def _rope_params(hf, arch, tokens, where):
  """The rope dict of the full-attention RoPE layers, or a ValueError where nopejax's rule
  (scaling on full-attention RoPE layers only) and transformers' would differ."""
  outer = hf.get("rope_scaling") or hf.get("rope_parameters") or {}  # transformers' precedence
  sliding_rope = any(t.startswith("rope@sliding") for t in tokens)
  full_rope = any(t.startswith("rope") and "@sliding" not in t for t in tokens)
  if not any(key in _LAYER_KINDS for key in outer):
    if sliding_rope and _rope_type(outer) != "default":
      raise ValueError(
        f"{where}: rope_parameters.rope_type={_rope_type(outer)!r} would scale the "
        "sliding_attention RoPE layers too; nopejax leaves sliding-window RoPE layers unscaled"
      )
    return outer
  if arch == "llama":
    raise ValueError(
      f"{where}: rope_parameters per layer type are not supported for llama; LlamaForCausalLM "
      "reads one rope dict for all layers"
    )
  if set(outer) - set(_LAYER_KINDS):
    raise ValueError(
      f"{where}: rope_parameters per layer type: expected keys {', '.join(_LAYER_KINDS)}, got "
      f"{', '.join(map(str, outer))}"
    )
  full, sliding = outer.get("full_attention"), outer.get("sliding_attention")
  for kind, needed, params in (("full", full_rope, full), ("sliding", sliding_rope, sliding)):
    if needed and not isinstance(params, dict):
      raise ValueError(f"{where}: rope_parameters.{kind}_attention: missing for its RoPE layers")
  if sliding_rope and _rope_type(sliding) != "default":
    raise ValueError(
      f"{where}: rope_parameters.sliding_attention.rope_type={_rope_type(sliding)!r}; nopejax "
      "leaves sliding-window RoPE layers unscaled (default only)"
    )
  theta = hf.get("rope_theta", _DEFAULTS[arch]["rope_theta"])
  thetas = {float(p.get("rope_theta", theta)) for p in (full, sliding) if isinstance(p, dict)}
  if len(thetas) > 1:
    raise ValueError(
      f"{where}: rope_parameters per layer type with rope_theta {sorted(thetas)}; nopejax has "
      "one model.rope_theta"
    )
  return full if isinstance(full, dict) else sliding or {}


def _rope_keys(hf, arch, tokens, where):
  """model.rope_theta and the model.rope_scaling keys, as transformers 5.x computes the rope
  parameters (modeling_rope_utils.py: standardize_rope_params and ROPE_INIT_FUNCTIONS)."""
  params = _rope_params(hf, arch, tokens, where)
  rope_type = _rope_type(params)
  if rope_type not in _ROPE_TYPES:
    raise ValueError(
      f"{where}: rope_parameters.rope_type={rope_type!r} is not supported; supported: "
      f"{', '.join(_ROPE_TYPES)}"
    )
  missing = [key for key in _ROPE_REQUIRED.get(rope_type, ()) if key not in params]
  if missing:
    raise ValueError(f"{where}: rope_parameters.rope_type={rope_type!r} needs {', '.join(missing)}")
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
  if partial not in (None, 1, 1.0):
    raise ValueError(
      f"{where}: partial_rotary_factor={partial} is not supported; {arch} rotates whole heads"
    )
  theta = params.get("rope_theta", hf.get("rope_theta", _DEFAULTS[arch]["rope_theta"]))
  keys = dict(rope_theta=float(theta), rope_scaling=_ROPE_TYPES[rope_type])
  if rope_type == "default":
    return keys
  max_len = int(hf.get("max_position_embeddings", _DEFAULTS[arch]["max_position_embeddings"]))
  factor = params["factor"]
  if rope_type == "dynamic":  # transformers measures it from max_position_embeddings
    keys.update(rope_original_len=max_len)
  if rope_type in ("yarn", "llama3"):
    # A top-level original_max_position_embeddings comes first (transformers' Phi3 exception).
    original = int(
      hf.get("original_max_position_embeddings")
      or params.get("original_max_position_embeddings")
      or max_len
    )
    keys.update(rope_original_len=original)
    if factor is None:  # transformers' DeepSeek-V3 rule, yarn only
      factor = max_len / original
  if isinstance(factor, bool) or not isinstance(factor, (int, float)):
    raise ValueError(f"{where}: rope_parameters.factor={factor!r}: expected a number")
  keys.update(rope_scaling_factor=float(factor))
  if rope_type == "llama3":
    keys.update(
      rope_low_freq_factor=float(params["low_freq_factor"]),
      rope_high_freq_factor=float(params["high_freq_factor"]),
    )
  if rope_type == "yarn":
    # transformers reads truncate from the outer rope dict, also when it is per layer type.
    outer = hf.get("rope_scaling") or hf.get("rope_parameters")
    keys.update(
      yarn_beta_fast=float(params.get("beta_fast") or 32),
      yarn_beta_slow=float(params.get("beta_slow") or 1),
      yarn_mscale=float(params.get("mscale") or 0),
      yarn_mscale_all_dim=float(params.get("mscale_all_dim") or 0),
      yarn_attention_factor=params.get("attention_factor"),
      yarn_truncate=bool(outer.get("truncate", True)),
    )
  return keys


def _layer_tokens(hf, arch, num_layers, where):
  """Per-layer `SCHEME[@sliding:W]` tokens, following how transformers builds each layer."""
  get = lambda key: hf.get(key, _DEFAULTS[arch].get(key))
  uses_rope = [True] * num_layers
  if arch == "smollm3":
    interval = get("no_rope_layer_interval")
    rope_flags = hf.get("no_rope_layers")
    if rope_flags is None:
      rope_flags = [int((i + 1) % interval != 0) for i in range(num_layers)]
    if len(rope_flags) < num_layers or any(f not in (0, 1) for f in rope_flags):
      raise ValueError(
        f"{where}: no_rope_layers={rope_flags} needs a 0 or 1 for each of the {num_layers} layers"
      )
    uses_rope = [bool(f) for f in rope_flags[:num_layers]]

  window = None
  types = ["full_attention"] * num_layers
  if arch == "smollm3":
    window = get("sliding_window")  # the sliding mask reads it whatever use_sliding_window says
    types = hf.get("layer_types") or [
      "sliding_attention"
      if get("use_sliding_window") and window is not None and not rope
      else "full_attention"
      for rope in uses_rope
    ]
  elif arch in ("qwen2", "qwen3"):
    window = get("sliding_window") if get("use_sliding_window") else None
    types = hf.get("layer_types") or [
      "sliding_attention"
      if window is not None and i >= get("max_window_layers")
      else "full_attention"
      for i in range(num_layers)
    ]
  # LlamaModel has no sliding layers: it ignores layer_types and sliding_window.
  if len(types) < num_layers or any(
    t not in ("full_attention", "sliding_attention") for t in types[:num_layers]
  ):
    raise ValueError(
      f"{where}: layer_types={types} needs full_attention or sliding_attention "
      f"for each of the {num_layers} layers"
    )
  tokens = []
  for rope, kind in zip(uses_rope, types[:num_layers]):
    token = "rope" if rope else "nope"
    if kind == "sliding_attention":
      if not isinstance(window, int) or window <= 0:
        raise ValueError(
          f"{where}: layer_types has sliding_attention layers but sliding_window="
          f"{window!r} (use_sliding_window={get('use_sliding_window')})"
        )
      token += f"@sliding:{window}"
    tokens.append(token)
  return tokens


def model_config_from_hf(hf, *, dtype="float32", where="config.json"):
  """The nopejax `model` group for a transformers config dict; refuses what it cannot express."""
  arch = _architecture(hf, where)
  missing = [key for key in _REQUIRED if not isinstance(hf.get(key), int)]
  if missing:
    raise ValueError(f"{where}: missing or non-integer {', '.join(missing)}")
  get = lambda key: hf.get(key, _DEFAULTS[arch].get(key, _COMMON_DEFAULTS.get(key)))
  if get("hidden_act") != "silu":
    raise ValueError(
      f"{where}: hidden_act={get('hidden_act')!r} is not supported; the nopejax "
      "MLP is SwiGLU (silu)"
    )
  if dtype not in spec_lib.DTYPES:
    raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(spec_lib.DTYPES)}")
  num_layers = hf["num_hidden_layers"]
  num_heads = hf["num_attention_heads"]
  c = spec_lib.model_config()
  c.vocab_size = hf["vocab_size"]
  c.d_model = hf["hidden_size"]
  c.num_layers = num_layers
  c.num_heads = num_heads
  c.num_kv_heads = get("num_key_value_heads") or num_heads
  c.head_dim = get("head_dim") or hf["hidden_size"] // num_heads
  c.d_ff = hf["intermediate_size"]
  tokens = _layer_tokens(hf, arch, num_layers, where)
  c.positions = ",".join(patterns.period(tokens))
  c.windows = "full"
  c.input_positions = "none"
  c.max_len = int(get("max_position_embeddings"))
  for key, value in _rope_keys(hf, arch, tokens, where).items():
    c[key] = value
  c.rope_fraction = 1.0
  c.query_temperature = False
  c.tie_embeddings = bool(get("tie_word_embeddings"))
  c.qk_norm = arch == "qwen3"
  c.attn_bias = arch == "qwen2" or bool(get("attention_bias"))
  c.mlp_bias = arch in ("llama", "smollm3") and bool(get("mlp_bias"))
  c.norm_eps = float(get("rms_norm_eps"))
  c.param_dtype = dtype
  spec_lib.resolve(c)
  return c


def load_config(directory, *, dtype="float32"):
  """(model_cfg, architecture) from the config.json of an HF model directory (local or a
  bucket URL)."""
  hf = _read_config(directory)
  where = str(storage.path(directory) / "config.json")
  model_cfg = model_config_from_hf(hf, dtype=dtype, where=where)
  return model_cfg, _architecture(hf, where)


# ----------------------------------------------------------------------------------- write


def check_expressible(spec):
  """The HF architecture for `spec`, or a one-line ValueError naming the key that blocks it."""
  for i, t in enumerate(spec.layers):
    if t.scheme not in ("rope", "nope"):
      raise ValueError(
        f"model.positions: layer {i} is {t.scheme!r}; transformers' Llama, "
        "SmolLM3 and Qwen3 express only rope and nope layers"
      )
    if t.window == "chunked":
      raise ValueError(
        f"model.positions/model.windows: layer {i} has a chunked window ({t}); "
        "transformers' Llama, SmolLM3 and Qwen3 have no chunked attention"
      )
  if spec.input_positions != "none":
    raise ValueError(
      f"model.input_positions={spec.input_positions!r} cannot be exported; "
      "transformers' Llama, SmolLM3 and Qwen3 have no input position embeddings"
    )
  if spec.query_temperature:
    raise ValueError(
      "model.query_temperature: Llama 4's NoPE query temperature cannot be "
      "exported to Llama, SmolLM3 or Qwen3"
    )
  for i, t in enumerate(spec.layers):
    if t.query_scaling != "none":
      raise ValueError(
        f"model.query_scaling: layer {i} scales its queries ({t.query_scaling}); transformers' "
        "Llama, SmolLM3 and Qwen3 do not"
      )
  if spec.rope_scaling == "ntk":
    raise ValueError(
      "model.rope_scaling=ntk: transformers has no static NTK-aware RoPE (its NTK is dynamic)"
    )
  if spec.rope_scaling != "none" and any(
    t.scheme == "rope" and t.window == "sliding" for t in spec.layers
  ):
    raise ValueError(
      f"model.rope_scaling={spec.rope_scaling}: transformers' one rope_parameters would scale "
      "the sliding-window RoPE layers too, which nopejax leaves unscaled"
    )
  if spec.rope_dim not in (0, spec.head_dim):
    raise ValueError(
      f"model.rope_fraction: {spec.rope_dim} of {spec.head_dim} head dims rotated; "
      "transformers' default RoPE rotates whole heads (rope_fraction=1.0)"
    )
  sizes = {t.window_size for t in spec.layers if t.window == "sliding"}
  if len(sizes) > 1:
    raise ValueError(
      f"model.positions/model.windows: sliding windows of sizes {sorted(sizes)}; "
      "transformers has one sliding_window per model"
    )
  nope = any(t.scheme == "nope" for t in spec.layers)
  if spec.qk_norm:
    if nope:
      raise ValueError(
        "model.qk_norm with NoPE layers: Qwen3 (the architecture with q/k norms) "
        "has RoPE in every layer"
      )
    if spec.mlp_bias:
      raise ValueError("model.mlp_bias with model.qk_norm: Qwen3 has no MLP biases")
    return "qwen3"
  if nope or sizes:
    return "smollm3"
  return "llama"


def _rope_parameters(spec):
  """transformers' rope_parameters for the spec's RoPE and its scaling (check_expressible has
  refused what transformers would compute differently)."""
  rope = {"rope_type": {v: k for k, v in _ROPE_TYPES.items()}[spec.rope_scaling]}
  rope["rope_theta"] = spec.rope_theta
  if spec.rope_scaling == "none":
    return rope
  rope["factor"] = spec.rope_scaling_factor
  if spec.rope_scaling in ("yarn", "llama3"):
    rope["original_max_position_embeddings"] = spec.rope_original_len
  if spec.rope_scaling == "llama3":
    rope["low_freq_factor"] = spec.rope_low_freq_factor
    rope["high_freq_factor"] = spec.rope_high_freq_factor
  if spec.rope_scaling == "yarn":
    rope["beta_fast"] = spec.yarn_beta_fast
    rope["beta_slow"] = spec.yarn_beta_slow
    # Written only when set: transformers' defaults are the same, and older versions lack keys.
    for key, value in (("mscale", spec.yarn_mscale), ("mscale_all_dim", spec.yarn_mscale_all_dim)):
      if value:
        rope[key] = value
    if spec.yarn_attention_factor is not None:
      rope["attention_factor"] = spec.yarn_attention_factor
    if not spec.yarn_truncate:
      rope["truncate"] = False
  return rope


def hf_config(spec, arch, dtype):
  """The config.json dict of `spec` as architecture `arch` (from check_expressible)."""
  sliding = [t.window == "sliding" for t in spec.layers]
  window = next((t.window_size for t in spec.layers if t.window == "sliding"), None)
  theta = spec.rope_theta
  rope = _rope_parameters(spec)
  # transformers' dynamic NTK measures its extension from max_position_embeddings.
  max_len = spec.rope_original_len if spec.rope_scaling == "dynamic" else spec.max_len
  hf = {
    "architectures": [next(k for k, v in ARCHITECTURES.items() if v == arch)],
    "model_type": arch,
    "vocab_size": spec.vocab_size,
    "hidden_size": spec.d_model,
    "intermediate_size": spec.d_ff,
    "num_hidden_layers": spec.num_layers,
    "num_attention_heads": spec.num_heads,
    "num_key_value_heads": spec.num_kv_heads,
    "head_dim": spec.head_dim,
    "hidden_act": "silu",
    "max_position_embeddings": max_len,
    "rms_norm_eps": spec.norm_eps,
    "rope_parameters": rope,
    "rope_theta": theta,  # where transformers 4.x reads it
    "tie_word_embeddings": spec.tie_embeddings,
    "attention_bias": spec.attn_bias,
    "attention_dropout": 0.0,
    # The tokenizer is not part of a nopejax model; ids from the class defaults would point
    # outside small vocabularies.
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "use_cache": True,
    "dtype": np.dtype(dtype).name,
  }
  if spec.rope_scaling != "none":
    hf["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}  # transformers 4.x
  if arch in ("llama", "smollm3"):
    hf["mlp_bias"] = spec.mlp_bias
  if arch in ("smollm3", "qwen3"):
    hf["use_sliding_window"] = any(sliding)
    hf["sliding_window"] = window
    hf["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
  if arch == "smollm3":
    hf["no_rope_layers"] = [int(t.scheme == "rope") for t in spec.layers]
  if arch == "qwen3":
    hf["max_window_layers"] = spec.num_layers
  return hf
