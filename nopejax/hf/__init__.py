"""Hugging Face interop: SmolLM3 and Llama-family checkpoints in and out, with logit parity.

    python -m nopejax.hf import --hf_dir=DIR --workdir=WORKDIR  # WORKDIR/params/, model_config.json
    python -m nopejax.hf export --workdir=WORKDIR --out=DIR     # config.json + model.safetensors

Layer semantics follow transformers 5.x (SmolLM3ForCausalLM, LlamaForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM). Mapping choices:
- SmolLM3 `no_rope_layers[i] == 1` means layer i USES RoPE; 0 is a NoPE layer.
- A layer is sliding when `layer_types[i] == "sliding_attention"` (that is what picks its mask).
  transformers' sliding mask keeps key j for query i when `j > i - sliding_window`, so the query
  sees `sliding_window` tokens including itself: exactly our `sliding:W`, W unchanged.
- RoPE types default, linear, dynamic, yarn and llama3 map onto `model.rope_theta` and the
  `model.rope_scaling` keys both ways; others (longrope, ...) are refused, and so is one scaled
  rope for all layers where some are sliding (nopejax leaves sliding RoPE layers unscaled).
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
import os

from nopejax import storage
from nopejax.hf.config import ARCHITECTURES, check_expressible, hf_config, model_config_from_hf
from nopejax.hf.weights import load, save
from nopejax.model import spec as spec_lib
from nopejax.train import params_io

__all__ = [
  "load",
  "save",
  "import_to_workdir",
  "workdir_model_config",
  "export_from_workdir",
  "model_config_from_hf",
  "check_expressible",
  "hf_config",
  "ARCHITECTURES",
]


# -------------------------------------------------------------------------------- workdirs


def import_to_workdir(hf_dir, workdir, *, dtype="float32", force=False):
  """HF directory -> WORKDIR/params/ (orbax) and WORKDIR/model_config.json."""
  model_cfg, params = load(hf_dir, dtype=dtype)
  hf_dir, workdir = storage.path(hf_dir), storage.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  params_io.save_params(os.fspath(workdir / "params"), params, force=force)
  storage.write_json(workdir / "model_config.json", model_cfg.to_dict(), indent=2)
  # The tokenizer travels with the weights, so fine-tuning can use `hf:WORKDIR/tokenizer.json`.
  if (hf_dir / "tokenizer.json").is_file():
    storage.write_bytes(workdir / "tokenizer.json", (hf_dir / "tokenizer.json").read_bytes())
  return model_cfg


def workdir_model_config(workdir):
  """The `model` group of WORKDIR/config.json (written by training), else model_config.json."""
  full = storage.path(workdir) / "config.json"
  if full.is_file():
    group = json.loads(full.read_text()).get("model")
    if not isinstance(group, dict):
      raise ValueError(f"{full}: no `model` group")
  else:
    path = storage.path(workdir) / "model_config.json"
    if not path.is_file():
      raise FileNotFoundError(f"{workdir}: neither config.json nor model_config.json")
    group = json.loads(path.read_text())
  model_cfg = spec_lib.model_config()
  model_cfg.update(group)
  return model_cfg


def export_from_workdir(workdir, out):
  """WORKDIR's model config and params/ -> an HF directory at `out`."""
  model_cfg = workdir_model_config(workdir)
  save(out, model_cfg, params_io.load_params(os.fspath(storage.path(workdir) / "params")))
  return model_cfg
