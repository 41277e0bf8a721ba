"""Hugging Face interop: SmolLM3 and Llama-family checkpoints in and out, with logit parity.

    python -m nopejax.hf import --hf_dir=DIR --workdir=WORKDIR   # WORKDIR/params/, model_config.json
    python -m nopejax.hf export --workdir=WORKDIR --out=DIR      # config.json + model.safetensors

Layer semantics follow transformers 5.x (SmolLM3ForCausalLM, LlamaForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM). Mapping choices:
- SmolLM3 `no_rope_layers[i] == 1` means layer i USES RoPE; 0 is a NoPE layer.
- A layer is sliding when `layer_types[i] == "sliding_attention"` (that is what picks its mask).
  transformers' sliding mask keeps key j for query i when `j > i - sliding_window`, so the query
  sees `sliding_window` tokens including itself: exactly our `sliding:W`, W unchanged.
- Only default RoPE maps onto `model.rope_theta`; other rope types are refused.
- Llama/SmolLM3/Qwen3 `attention_bias` also puts a bias on o_proj, which nopejax lacks: it loads
  only when that bias is zero, and save writes a zero one.
- Save writes Llama when every layer is full-attention RoPE (the architecture every downstream
  tool reads), Qwen3 when model.qk_norm, and SmolLM3 otherwise (NoPE layers or sliding windows:
  its explicit no_rope_layers and layer_types express any such per-layer mix).

Checkpoints are read from safetensors headers and raw bytes (bf16 via ml_dtypes): never pickle,
never torch. Params come back as host numpy arrays in the param dtype, laid out like
`nopejax.init` (layer i at params['layers'][f'block_{i % P}'][..., i // P]).
"""

import json
import math
import os
import shutil
import struct

from absl import app
from absl import flags
import jax
import ml_dtypes
import numpy as np
from safetensors import numpy as st_numpy

from nopejax import config as config_lib
from nopejax import params_io

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "SmolLM3ForCausalLM": "smollm3",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# transformers 5.x class defaults of the keys that change the function, for config.json files
# that omit them (save_pretrained writes them all; hand-written configs may not).
_DEFAULTS = {
    "llama": dict(num_key_value_heads=None, head_dim=None, rope_theta=10000.0,
                  tie_word_embeddings=False, max_position_embeddings=2048),
    "smollm3": dict(num_key_value_heads=4, head_dim=None, rope_theta=2000000.0,
                    tie_word_embeddings=True, max_position_embeddings=32768,
                    use_sliding_window=False, sliding_window=None, no_rope_layer_interval=4),
    "qwen2": dict(num_key_value_heads=32, head_dim=None, rope_theta=10000.0,
                  tie_word_embeddings=False, max_position_embeddings=32768,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    "qwen3": dict(num_key_value_heads=32, head_dim=128, rope_theta=10000.0,
                  tie_word_embeddings=False, max_position_embeddings=32768,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28),
}
_COMMON_DEFAULTS = dict(rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                        mlp_bias=False)
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")

# safetensors dtype names; bf16 and fp8 come from ml_dtypes, which jax already depends on.
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


# ----------------------------------------------------------------------------------- config


def _read_config(directory):
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing; expected a Hugging Face model directory")
  try:
    with open(path) as f:
      hf = json.load(f)
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
    raise ValueError(f"{where}: unsupported architecture {name!r}; supported: "
                     f"{', '.join(ARCHITECTURES)}")
  return arch


def _rope_theta(hf, arch, where):
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if any(key in ("full_attention", "sliding_attention") for key in params):
    raise ValueError(f"{where}: rope_parameters per layer type are not supported; nopejax has "
                     "one model.rope_theta")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"{where}: rope_parameters.rope_type={rope_type!r} is not supported; only "
                     "'default' RoPE maps exactly onto model.rope_theta")
  factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
  if factor not in (None, 1, 1.0):
    raise ValueError(f"{where}: partial_rotary_factor={factor} is not supported; "
                     f"{arch} rotates whole heads")
  return float(params.get("rope_theta", hf.get("rope_theta", _DEFAULTS[arch]["rope_theta"])))


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
      raise ValueError(f"{where}: no_rope_layers={rope_flags} needs a 0 or 1 for each of the "
                       f"{num_layers} layers")
    uses_rope = [bool(f) for f in rope_flags[:num_layers]]

  window = None
  types = ["full_attention"] * num_layers
  if arch == "smollm3":
    window = get("sliding_window")  # the sliding mask reads it whatever use_sliding_window says
    types = hf.get("layer_types") or [
        "sliding_attention" if get("use_sliding_window") and window is not None and not rope
        else "full_attention" for rope in uses_rope]
  elif arch in ("qwen2", "qwen3"):
    window = get("sliding_window") if get("use_sliding_window") else None
    types = hf.get("layer_types") or [
        "sliding_attention" if window is not None and i >= get("max_window_layers")
        else "full_attention" for i in range(num_layers)]
  # LlamaModel has no sliding layers: it ignores layer_types and sliding_window.
  if len(types) < num_layers or any(t not in ("full_attention", "sliding_attention")
                                    for t in types[:num_layers]):
    raise ValueError(f"{where}: layer_types={types} needs full_attention or sliding_attention "
                     f"for each of the {num_layers} layers")
  tokens = []
  for rope, kind in zip(uses_rope, types[:num_layers]):
    token = "rope" if rope else "nope"
    if kind == "sliding_attention":
      if not isinstance(window, int) or window <= 0:
        raise ValueError(f"{where}: layer_types has sliding_attention layers but sliding_window="
                         f"{window!r} (use_sliding_window={get('use_sliding_window')})")
      token += f"@sliding:{window}"
    tokens.append(token)
  return tokens


def _shortest_period(tokens):
  for p in range(1, len(tokens) + 1):
    if len(tokens) % p == 0 and tokens == tokens[:p] * (len(tokens) // p):
      return tokens[:p]
  raise AssertionError("unreachable: the whole list is always a period")


def model_config_from_hf(hf, *, dtype="float32", where="config.json"):
  """The nopejax `model` group for a transformers config dict; refuses what it cannot express."""
  arch = _architecture(hf, where)
  missing = [key for key in _REQUIRED if not isinstance(hf.get(key), int)]
  if missing:
    raise ValueError(f"{where}: missing or non-integer {', '.join(missing)}")
  get = lambda key: hf.get(key, _DEFAULTS[arch].get(key, _COMMON_DEFAULTS.get(key)))
  if get("hidden_act") != "silu":
    raise ValueError(f"{where}: hidden_act={get('hidden_act')!r} is not supported; the nopejax "
                     "MLP is SwiGLU (silu)")
  if dtype not in config_lib.DTYPES:
    raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(config_lib.DTYPES)}")
  num_layers = hf["num_hidden_layers"]
  num_heads = hf["num_attention_heads"]
  c = config_lib.model_config()
  c.vocab_size = hf["vocab_size"]
  c.d_model = hf["hidden_size"]
  c.num_layers = num_layers
  c.num_heads = num_heads
  c.num_kv_heads = get("num_key_value_heads") or num_heads
  c.head_dim = get("head_dim") or hf["hidden_size"] // num_heads
  c.d_ff = hf["intermediate_size"]
  c.positions = ",".join(_shortest_period(_layer_tokens(hf, arch, num_layers, where)))
  c.windows = "full"
  c.input_positions = "none"
  c.max_len = int(get("max_position_embeddings"))
  c.rope_theta = _rope_theta(hf, arch, where)
  c.rope_fraction = 1.0
  c.query_temperature = False
  c.tie_embeddings = bool(get("tie_word_embeddings"))
  c.qk_norm = arch == "qwen3"
  c.attn_bias = arch == "qwen2" or bool(get("attention_bias"))
  c.mlp_bias = arch in ("llama", "smollm3") and bool(get("mlp_bias"))
  c.norm_eps = float(get("rms_norm_eps"))
  c.param_dtype = dtype
  config_lib.resolve(c)
  return c


# ---------------------------------------------------------------------------- tensor layout


def _linear(ours, name, shape, in_dims):
  # A Linear's HF weight is [prod(out dims), prod(in dims)]; ours is [*in dims, *out dims].
  return ours, name, shape, (math.prod(shape[in_dims:]), math.prod(shape[:in_dims])), True


def _plain(ours, name, shape, hf_shape=None):
  # Same element order in both; HF vectors are flat (biases are [heads, head_dim] here).
  return ours, name, shape, hf_shape or (math.prod(shape),), False


def _tensor_table(spec):
  """(params path, HF name, our shape, HF shape, transposed) for every tensor of the model."""
  D, F, V = spec.d_model, spec.d_ff, spec.vocab_size
  N, K, H = spec.num_heads, spec.num_kv_heads, spec.head_dim
  top = [_plain(("embedding",), "model.embed_tokens.weight", (V, D), (V, D)),
         _plain(("final_norm", "scale"), "model.norm.weight", (D,))]
  if not spec.tie_embeddings:
    top.append(_linear(("lm_head",), "lm_head.weight", (D, V), 1))
  layer = [_plain(("attn_norm", "scale"), "input_layernorm.weight", (D,)),
           _linear(("attn", "q"), "self_attn.q_proj.weight", (D, N, H), 1),
           _linear(("attn", "k"), "self_attn.k_proj.weight", (D, K, H), 1),
           _linear(("attn", "v"), "self_attn.v_proj.weight", (D, K, H), 1),
           _linear(("attn", "o"), "self_attn.o_proj.weight", (N, H, D), 2),
           _plain(("mlp_norm", "scale"), "post_attention_layernorm.weight", (D,)),
           _linear(("mlp", "gate"), "mlp.gate_proj.weight", (D, F), 1),
           _linear(("mlp", "up"), "mlp.up_proj.weight", (D, F), 1),
           _linear(("mlp", "down"), "mlp.down_proj.weight", (F, D), 1)]
  if spec.attn_bias:
    layer += [_plain(("attn", f"{p}_bias"), f"self_attn.{p}_proj.bias", (heads, H))
              for p, heads in (("q", N), ("k", K), ("v", K))]
  if spec.qk_norm:
    layer += [_plain(("attn", f"{p}_norm", "scale"), f"self_attn.{p}_norm.weight", (H,))
              for p in ("q", "k")]
  if spec.mlp_bias:
    layer += [_plain(("mlp", f"{p}_bias"), f"mlp.{p}_proj.bias", (size,))
              for p, size in (("gate", F), ("up", F), ("down", D))]
  return top, layer


def _to_ours(w, shape, transposed):
  return (w.T if transposed else w).reshape(shape)


def _to_hf(w, hf_shape, transposed):
  return w.reshape(hf_shape[::-1]).T if transposed else w.reshape(hf_shape)


def _o_bias(spec, arch):
  """Whether the HF model has an o_proj bias (which nopejax keeps at zero)."""
  return spec.attn_bias and arch != "qwen2"


class _Checkpoint:
  """The tensors of a safetensors checkpoint (one file or an index of shards), read lazily."""

  def __init__(self, directory):
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
      files = [single]
    elif os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map") or {}
      files = sorted({os.path.join(directory, name) for name in weight_map.values()})
    else:
      raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json "
                              "(only safetensors checkpoints are read; pickled .bin files are not)")
    self.entries = {}
    for path in files:
      with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
      for name, info in header.items():
        if name != "__metadata__":
          start = 8 + size + info["data_offsets"][0]
          self.entries[name] = (path, info["dtype"], tuple(info["shape"]), start)

  def read(self, name, shape):
    """The tensor `name` as numpy, or a ValueError naming it and the expected shape."""
    if name not in self.entries:
      raise ValueError(f"checkpoint: missing tensor {name} (expected shape {shape})")
    path, dtype, have, offset = self.entries[name]
    if have != tuple(shape):
      raise ValueError(f"checkpoint: tensor {name} has shape {have}, expected {tuple(shape)}")
    if dtype not in _ST_DTYPES:
      raise ValueError(f"checkpoint: tensor {name} has unsupported dtype {dtype}")
    return np.fromfile(path, dtype=_ST_DTYPES[dtype], count=math.prod(have),
                       offset=offset).reshape(have)


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree, path, where):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      raise ValueError(f"params: missing {where}")
    tree = tree[key]
  return tree


# ------------------------------------------------------------------------------------ load


def load(path, *, dtype="float32"):
  """(model_cfg, params) from a local HF model directory; params are numpy in `dtype`.

  `dtype` becomes model.param_dtype (bf16 checkpoints load into fp32 params by default); the
  compute dtype stays model_config()'s default.
  """
  path = os.fspath(path)
  hf = _read_config(path)
  where = os.path.join(path, "config.json")
  model_cfg = model_config_from_hf(hf, dtype=dtype, where=where)
  spec = config_lib.resolve(model_cfg)
  arch = _architecture(hf, where)
  ckpt = _Checkpoint(path)
  np_dtype = np.dtype(config_lib.DTYPES[dtype])
  expected = set()

  def read(name, shape, hf_shape, transposed):
    expected.add(name)
    w = _to_ours(ckpt.read(name, hf_shape), shape, transposed)
    return np.ascontiguousarray(w.astype(np_dtype))

  top, layer = _tensor_table(spec)
  params = {}
  for ours, name, *layout in top:
    _set(params, ours, read(name, *layout))
  period = len(spec.period)
  for j in range(period):
    for ours, name, *layout in layer:
      stacked = [read(f"model.layers.{i}.{name}", *layout)
                 for i in range(j, spec.num_layers, period)]
      _set(params, ("layers", f"block_{j}") + ours, np.stack(stacked))

  if _o_bias(spec, arch):
    for i in range(spec.num_layers):
      name = f"model.layers.{i}.self_attn.o_proj.bias"
      expected.add(name)
      if np.any(ckpt.read(name, (spec.d_model,)) != 0):
        raise ValueError(f"checkpoint: {name} is nonzero; nopejax attention has no output "
                         "projection bias (model.attn_bias covers q, k and v)")
  if spec.tie_embeddings:
    expected.add("lm_head.weight")  # the same matrix as the embedding when present
  unexpected = sorted(n for n in ckpt.entries
                      if n not in expected and not n.endswith("rotary_emb.inv_freq"))
  if unexpected:
    raise ValueError(f"checkpoint: unexpected tensors for this config: {', '.join(unexpected[:8])}")
  return model_cfg, params


# ------------------------------------------------------------------------------------ save


def _check_expressible(spec):
  """The HF architecture for `spec`, or a one-line ValueError naming the key that blocks it."""
  for i, t in enumerate(spec.layers):
    if t.scheme not in ("rope", "nope"):
      raise ValueError(f"model.positions: layer {i} is {t.scheme!r}; transformers' Llama, "
                       "SmolLM3 and Qwen3 express only rope and nope layers")
    if t.window == "chunked":
      raise ValueError(f"model.positions/model.windows: layer {i} has a chunked window ({t}); "
                       "transformers' Llama, SmolLM3 and Qwen3 have no chunked attention")
  if spec.input_positions != "none":
    raise ValueError(f"model.input_positions={spec.input_positions!r} cannot be exported; "
                     "transformers' Llama, SmolLM3 and Qwen3 have no input position embeddings")
  if spec.query_temperature:
    raise ValueError("model.query_temperature: Llama 4's NoPE query temperature cannot be "
                     "exported to Llama, SmolLM3 or Qwen3")
  if spec.rope_dim not in (0, spec.head_dim):
    raise ValueError(f"model.rope_fraction: {spec.rope_dim} of {spec.head_dim} head dims rotated; "
                     "transformers' default RoPE rotates whole heads (rope_fraction=1.0)")
  sizes = {t.window_size for t in spec.layers if t.window == "sliding"}
  if len(sizes) > 1:
    raise ValueError(f"model.positions/model.windows: sliding windows of sizes {sorted(sizes)}; "
                     "transformers has one sliding_window per model")
  nope = any(t.scheme == "nope" for t in spec.layers)
  if spec.qk_norm:
    if nope:
      raise ValueError("model.qk_norm with NoPE layers: Qwen3 (the architecture with q/k norms) "
                       "has RoPE in every layer")
    if spec.mlp_bias:
      raise ValueError("model.mlp_bias with model.qk_norm: Qwen3 has no MLP biases")
    return "qwen3"
  if nope or sizes:
    return "smollm3"
  return "llama"


def _hf_config(spec, arch, dtype):
  sliding = [t.window == "sliding" for t in spec.layers]
  window = next((t.window_size for t in spec.layers if t.window == "sliding"), None)
  theta = spec.rope_theta
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
      "max_position_embeddings": spec.max_len,
      "rms_norm_eps": spec.norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": theta},
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


def save(path, model_cfg, params):
  """Writes config.json + model.safetensors that transformers loads with the same logits."""
  spec = config_lib.resolve(model_cfg)
  arch = _check_expressible(spec)
  top, layer = _tensor_table(spec)
  params = jax.device_get(params)
  tensors = {}

  def put(name, w, where, shape, hf_shape, transposed):
    w = np.asarray(w)
    if w.shape != tuple(shape):
      raise ValueError(f"params: {where} has shape {w.shape}, expected {tuple(shape)}")
    tensors[name] = np.ascontiguousarray(_to_hf(w, hf_shape, transposed))

  for ours, name, *layout in top:
    where = "/".join(ours)
    put(name, _get(params, ours, where), where, *layout)
  period = len(spec.period)
  for j in range(period):
    for ours, name, *layout in layer:
      where = "/".join(("layers", f"block_{j}") + ours)
      stacked = np.asarray(_get(params, ("layers", f"block_{j}") + ours, where))
      if len(stacked) != spec.repeats:
        raise ValueError(f"params: {where} stacks {len(stacked)} layers, expected "
                         f"{spec.repeats} (model.num_layers / period)")
      for r in range(spec.repeats):
        put(f"model.layers.{r * period + j}.{name}", stacked[r], where, *layout)
  dtype = tensors["model.embed_tokens.weight"].dtype
  if _o_bias(spec, arch):
    for i in range(spec.num_layers):
      tensors[f"model.layers.{i}.self_attn.o_proj.bias"] = np.zeros((spec.d_model,), dtype)

  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(_hf_config(spec, arch, dtype), f, indent=2)
  st_numpy.save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------- command line


def import_to_workdir(hf_dir, workdir, *, dtype="float32", force=False):
  """HF directory -> WORKDIR/params/ (orbax) and WORKDIR/model_config.json."""
  model_cfg, params = load(hf_dir, dtype=dtype)
  os.makedirs(workdir, exist_ok=True)
  params_io.save_params(os.path.join(workdir, "params"), params, force=force)
  with open(os.path.join(workdir, "model_config.json"), "w") as f:
    json.dump(model_cfg.to_dict(), f, indent=2)
  # The tokenizer travels with the weights, so fine-tuning can use `hf:WORKDIR/tokenizer.json`.
  if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
    shutil.copyfile(os.path.join(hf_dir, "tokenizer.json"), os.path.join(workdir, "tokenizer.json"))
  return model_cfg


def workdir_model_config(workdir):
  """The `model` group of WORKDIR/config.json (written by training), else model_config.json."""
  full = os.path.join(workdir, "config.json")
  if os.path.isfile(full):
    with open(full) as f:
      group = json.load(f).get("model")
    if not isinstance(group, dict):
      raise ValueError(f"{full}: no `model` group")
  else:
    path = os.path.join(workdir, "model_config.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{workdir}: neither config.json nor model_config.json")
    with open(path) as f:
      group = json.load(f)
  model_cfg = config_lib.model_config()
  model_cfg.update(group)
  return model_cfg


def export_from_workdir(workdir, out):
  """WORKDIR's model config and params/ -> an HF directory at `out`."""
  model_cfg = workdir_model_config(workdir)
  save(out, model_cfg, params_io.load_params(os.path.join(workdir, "params")))
  return model_cfg


def _define_flags():
  flags.DEFINE_string("hf_dir", None, "import: the Hugging Face model directory to read")
  flags.DEFINE_string("workdir", None, "import: where params/ and model_config.json go; "
                      "export: the workdir to read")
  flags.DEFINE_string("out", None, "export: the Hugging Face directory to write")
  flags.DEFINE_enum("dtype", "float32", list(config_lib.DTYPES),
                    "import: model.param_dtype of the imported params")
  flags.DEFINE_bool("force", False, "import: overwrite an existing WORKDIR/params")


def main(argv):
  verbs = argv[1:]
  if len(verbs) != 1 or verbs[0] not in ("import", "export"):
    raise SystemExit(f"nopejax.hf: expected one verb, import or export; got {' '.join(verbs)!r}")
  verb, f = verbs[0], flags.FLAGS
  needed = ("hf_dir", "workdir") if verb == "import" else ("workdir", "out")
  missing = [f"--{name}" for name in needed if not f[name].value]
  if missing:
    raise SystemExit(f"nopejax.hf {verb}: missing {', '.join(missing)}")
  try:
    if verb == "import":
      model_cfg = import_to_workdir(f.hf_dir, f.workdir, dtype=f.dtype, force=f.force)
      print(f"imported {f.hf_dir} -> {f.workdir} (positions={model_cfg.positions})")
    else:
      export_from_workdir(f.workdir, f.out)
      print(f"exported {f.workdir} -> {f.out}")
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    raise SystemExit(f"nopejax.hf {verb}: {e}") from None


if __name__ == "__main__":
  _define_flags()
  app.run(main)
