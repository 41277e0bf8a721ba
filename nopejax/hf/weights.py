"""HF checkpoint tensors <-> nopejax params: the layout table, safetensors reading, load and save.

Checkpoints are read from safetensors headers and raw bytes (bf16 via ml_dtypes): never pickle,
never torch.
"""

import json
import math
import struct

import jax
import ml_dtypes
import numpy as np
from safetensors import numpy as st_numpy

from nopejax import storage
from nopejax.hf import config
from nopejax.model import spec as spec_lib

# safetensors dtype names; bf16 and fp8 come from ml_dtypes, which jax already depends on.
_ST_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "F8_E4M3": ml_dtypes.float8_e4m3fn,
  "F8_E5M2": ml_dtypes.float8_e5m2,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


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
  top = [
    _plain(("embedding",), "model.embed_tokens.weight", (V, D), (V, D)),
    _plain(("final_norm", "scale"), "model.norm.weight", (D,)),
  ]
  if not spec.tie_embeddings:
    top.append(_linear(("lm_head",), "lm_head.weight", (D, V), 1))
  layer = [
    _plain(("attn_norm", "scale"), "input_layernorm.weight", (D,)),
    _linear(("attn", "q"), "self_attn.q_proj.weight", (D, N, H), 1),
    _linear(("attn", "k"), "self_attn.k_proj.weight", (D, K, H), 1),
    _linear(("attn", "v"), "self_attn.v_proj.weight", (D, K, H), 1),
    _linear(("attn", "o"), "self_attn.o_proj.weight", (N, H, D), 2),
    _plain(("mlp_norm", "scale"), "post_attention_layernorm.weight", (D,)),
    _linear(("mlp", "gate"), "mlp.gate_proj.weight", (D, F), 1),
    _linear(("mlp", "up"), "mlp.up_proj.weight", (D, F), 1),
    _linear(("mlp", "down"), "mlp.down_proj.weight", (F, D), 1),
  ]
  if spec.attn_bias:
    layer += [
      _plain(("attn", f"{p}_bias"), f"self_attn.{p}_proj.bias", (heads, H))
      for p, heads in (("q", N), ("k", K), ("v", K))
    ]
  if spec.qk_norm:
    layer += [
      _plain(("attn", f"{p}_norm", "scale"), f"self_attn.{p}_norm.weight", (H,)) for p in ("q", "k")
    ]
  if spec.mlp_bias:
    layer += [
      _plain(("mlp", f"{p}_bias"), f"mlp.{p}_proj.bias", (size,))
      for p, size in (("gate", F), ("up", F), ("down", D))
    ]
  return top, layer


def _to_ours(w, shape, transposed):
  return (w.T if transposed else w).reshape(shape)


def _to_hf(w, hf_shape, transposed):
  return w.reshape(hf_shape[::-1]).T if transposed else w.reshape(hf_shape)


def _o_bias(spec, arch):
  """Whether the HF model has an o_proj bias (which nopejax keeps at zero)."""
  return spec.attn_bias and arch != "qwen2"


class _Checkpoint:
  """The tensors of a safetensors checkpoint (one file or an index of shards), read lazily:
  the headers first, then each tensor's bytes by offset (local files and bucket objects alike)."""

  def __init__(self, directory):
    directory = storage.path(directory)
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
      files = [single]
    elif index.is_file():
      weight_map = json.loads(index.read_text()).get("weight_map") or {}
      files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
      raise FileNotFoundError(
        f"{directory}: no model.safetensors or model.safetensors.index.json "
        "(only safetensors checkpoints are read; pickled .bin files are not)"
      )
    self.entries = {}
    for path in files:
      with path.open("rb") as f:
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
    np_dtype = np.dtype(_ST_DTYPES[dtype])
    size = math.prod(have) * np_dtype.itemsize
    with path.open("rb") as f:
      f.seek(offset)
      data = f.read(size)
    if len(data) != size:
      raise ValueError(f"checkpoint: tensor {name} is truncated in {path}")
    return np.frombuffer(data, dtype=np_dtype).reshape(have)


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
  """(model_cfg, params) from an HF model directory (local or a bucket URL); params are numpy
  in `dtype`.

  `dtype` becomes model.param_dtype (bf16 checkpoints load into fp32 params by default); the
  compute dtype stays model_config()'s default.
  """
  path = storage.path(path)
  model_cfg, arch = config.load_config(path, dtype=dtype)
  spec = spec_lib.resolve(model_cfg)
  ckpt = _Checkpoint(path)
  np_dtype = np.dtype(spec_lib.DTYPES[dtype])
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
      stacked = [
        read(f"model.layers.{i}.{name}", *layout) for i in range(j, spec.num_layers, period)
      ]
      _set(params, ("layers", f"block_{j}") + ours, np.stack(stacked))

  if _o_bias(spec, arch):
    for i in range(spec.num_layers):
      name = f"model.layers.{i}.self_attn.o_proj.bias"
      expected.add(name)
      if np.any(ckpt.read(name, (spec.d_model,)) != 0):
        raise ValueError(
          f"checkpoint: {name} is nonzero; nopejax attention has no output "
          "projection bias (model.attn_bias covers q, k and v)"
        )
  if spec.tie_embeddings:
    expected.add("lm_head.weight")  # the same matrix as the embedding when present
  unexpected = sorted(
    n for n in ckpt.entries if n not in expected and not n.endswith("rotary_emb.inv_freq")
  )
  if unexpected:
    raise ValueError(f"checkpoint: unexpected tensors for this config: {', '.join(unexpected[:8])}")
  return model_cfg, params


# ------------------------------------------------------------------------------------ save


def save(path, model_cfg, params):
  """Writes config.json + model.safetensors that transformers loads with the same logits."""
  spec = spec_lib.resolve(model_cfg)
  arch = config.check_expressible(spec)
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
        raise ValueError(
          f"params: {where} stacks {len(stacked)} layers, expected "
          f"{spec.repeats} (model.num_layers / period)"
        )
      for r in range(spec.repeats):
        put(f"model.layers.{r * period + j}.{name}", stacked[r], where, *layout)
  dtype = tensors["model.embed_tokens.weight"].dtype
  if _o_bias(spec, arch):
    for i in range(spec.num_layers):
      tensors[f"model.layers.{i}.self_attn.o_proj.bias"] = np.zeros((spec.d_model,), dtype)

  path = storage.path(path)  # storage's writes create it
  storage.write_json(path / "config.json", config.hf_config(spec, arch, dtype), indent=2)
  data = st_numpy.save(tensors, metadata={"format": "pt"})
  storage.write_bytes(path / "model.safetensors", data)
