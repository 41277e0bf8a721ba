"""The `model` config group, its validation, and the resolved static ModelSpec."""

import dataclasses
import math

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from nopejax import specs
from nopejax.model import patterns
from nopejax.model.schemes import SCHEMES, rope, xpos

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
INPUT_POSITIONS = ("none", "learned", "sinusoidal")
ATTENTION_IMPLS = ("auto", "reference", "xla", "flash", "splash", "cudnn")
REMAT_POLICIES = ("none", "full", "dots", "dots_saveable", "qkv_proj", "qkv_attn_out")
REMAT_SCOPES = ("period", "block")


def model_config():
  """Defaults of the `model` group: a tiny NoPE model; configs/ override what they need."""
  c = ml_collections.ConfigDict()
  c.vocab_size = 256  # tokens; must cover the tokenizer's ids
  c.d_model = 64  # residual stream width
  c.num_layers = 4  # decoder blocks
  c.num_heads = 4  # query heads
  c.num_kv_heads = 4  # key/value heads (GQA when fewer than num_heads)
  c.head_dim = config_dict.placeholder(int)  # None: d_model // num_heads
  c.d_ff = 256  # SwiGLU hidden width
  c.positions = "nope"  # per-layer schemes: a period or full list, or a preset (see patterns.py)
  c.windows = "full"  # per-layer attention windows, tiled like positions
  c.input_positions = "none"  # absolute embeddings added to the input: none|learned|sinusoidal
  c.max_len = 2048  # table size of learned input positions (evaluation beyond it is refused)
  c.rope_theta = 10000.0  # RoPE base wavelength
  c.rope_fraction = 1.0  # share of head dims rotated (Kazemnejad's rotary baseline: 0.25)
  # RoPE context extension of full/chunked RoPE layers (schemes/rope.py); sliding ones keep theirs.
  c.rope_scaling = "none"  # none|linear|ntk|dynamic|yarn|llama3, as transformers has them
  c.rope_scaling_factor = 1.0  # how many times longer than rope_original_len the context gets
  c.rope_original_len = 0  # the pretraining context (dynamic, yarn, llama3 need it); 0: unset
  c.rope_low_freq_factor = 1.0  # llama3: wavelengths above original_len / this are interpolated
  c.rope_high_freq_factor = 4.0  # llama3: wavelengths below original_len / this are kept
  c.yarn_beta_fast = 32.0  # YaRN: dims turning this often over original_len keep their frequency
  c.yarn_beta_slow = 1.0  # YaRN: dims turning fewer times are interpolated
  c.yarn_mscale = 0.0  # YaRN (DeepSeek): attention factor's numerator mscale; 0: off
  c.yarn_mscale_all_dim = 0.0  # YaRN (DeepSeek): its denominator mscale; 0: off
  c.yarn_attention_factor = config_dict.placeholder(float)  # None: from factor (and the mscales)
  c.yarn_truncate = True  # YaRN: round the ramp's ends to whole dims (transformers' default)
  c.t5_num_buckets = 32  # T5 relative-bias buckets (causal: all on the past side)
  c.t5_max_distance = 128  # distance at which T5 buckets stop growing
  c.t5_shared = False  # True: one T5 bias table for all t5 layers (T5's own layout)
  c.fire_threshold = 512  # FIRE: initial threshold L of its progressive normalization
  c.fire_mlp_width = 32  # FIRE: hidden width of the MLP f
  c.xpos_scale_base = 512.0  # xPos: gamma of the decay zeta^((m - n) / gamma)
  c.cope_npos_max = 64  # CoPE: position embeddings; contextual positions are capped below it
  c.prope_fraction = 0.75  # p-RoPE: share p of the highest frequencies that rotate (p=0: NoPE)
  c.query_scaling = "none"  # per-layer query scaling, tiled: none|llama4|ssmax|headscale
  c.ssmax_init = 0.43  # SSMax: initial s of the query scale s * log(n)
  c.query_temperature = config_dict.placeholder(
    bool
  )  # Llama 4 NoPE query temperature; None: preset decides
  c.temperature_floor_scale = 8192.0  # Llama 4: log(floor((pos+1)/floor_scale)+1)*attn_scale+1
  c.temperature_attn_scale = 0.1
  c.tie_embeddings = True  # output head reuses the input embedding
  c.qk_norm = False  # RMSNorm on queries and keys per head (Qwen3)
  c.attn_bias = False  # biases on q/k/v projections (Qwen2)
  c.mlp_bias = False  # biases in the MLP (some Llama variants)
  c.norm_eps = 1e-6  # RMSNorm epsilon
  c.dtype = "float32"  # compute dtype: float32|bfloat16
  c.param_dtype = "float32"  # storage dtype of the parameters (fp32 master weights)
  c.attention_impl = "auto"  # auto (per layer)|reference|xla|flash|splash (TPU)|cudnn (GPU)
  c.block_size = 512  # query/key block of the flash and splash paths
  c.flash_above = 4096  # on a CPU, auto uses the flash path for sequences longer than this
  c.loss_chunk = 2048  # tokens per chunk of the training loss's logits; 0: all at once
  c.remat = "none"  # activation checkpointing policy (decoder.REMAT): none|full|dots|...
  c.remat_scope = "period"  # what one checkpoint wraps: period (the scanned repeat)|block
  c.scan_unroll = 1  # periods per scan iteration; unrolling a short model saves the CPU loop
  return c


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything the model needs, hashable and resolved: the per-layer types are Python values."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_ff: int
  layers: tuple  # LayerType per layer
  period: tuple  # the repeating LayerTypes, scanned over num_layers // len(period)
  input_positions: str
  max_len: int
  rope_theta: float
  rope_dim: int
  t5_num_buckets: int
  t5_max_distance: int
  query_temperature: bool
  temperature_floor_scale: float
  temperature_attn_scale: float
  tie_embeddings: bool
  qk_norm: bool
  attn_bias: bool
  mlp_bias: bool
  norm_eps: float
  dtype: object
  param_dtype: object
  attention_impl: str
  block_size: int
  flash_above: int
  remat: str
  remat_scope: str = "period"
  loss_chunk: int = 2048
  scan_unroll: int = 1
  # RoPE context extension of full/chunked RoPE layers: model.rope_scaling and its options
  # (training and evaluation), which eval.rope_scaling overrides at evaluation. The defaults
  # scale nothing, so a config.json written before these keys existed resolves unchanged.
  rope_scaling: str = "none"  # schemes.rope.ROPE_SCALINGS
  rope_scaling_factor: float = 1.0
  rope_original_len: int = 0  # the pretraining context length; 0: unset
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  yarn_beta_fast: float = 32.0
  yarn_beta_slow: float = 1.0
  yarn_mscale: float = 0.0
  yarn_mscale_all_dim: float = 0.0
  yarn_attention_factor: float | None = None
  yarn_truncate: bool = True
  fire_threshold: int = 512
  fire_mlp_width: int = 32
  t5_shared: bool = False
  xpos_scale_base: float = 512.0
  cope_npos_max: int = 64
  prope_fraction: float = 0.75
  ssmax_init: float = 0.43

  @property
  def repeats(self):
    return self.num_layers // len(self.period)

  def check_length(self, length, what, hint=""):
    """A ValueError naming `what` when learned input positions cannot cover `length` tokens."""
    if self.input_positions == "learned" and length > self.max_len:
      raise ValueError(
        f"{what} needs {length} positions but the learned input positions cover "
        f"model.max_len={self.max_len}{hint}"
      )
    if any(t.scheme == "xpos" for t in self.layers):
      top = xpos.max_position(self.rope_dim, self.xpos_scale_base, self.dtype)
      if length > top:
        raise ValueError(
          f"{what} needs {length} positions but xPos's key scale overflows "
          f"model.dtype beyond position {top} at model.xpos_scale_base={self.xpos_scale_base:g}"
          f"{hint}; raise the scale base"
        )


def _loss_chunk(value):
  specs.check(
    isinstance(value, int) and not isinstance(value, bool) and value >= 0,
    f"model.loss_chunk: expected 0 (all logits at once) or a positive integer, got {value!r}",
  )
  return value


def resolve(cfg):
  """Validates the `model` group and returns its ModelSpec; errors name the key."""
  if isinstance(cfg, ModelSpec):
    return cfg
  for key in (
    "vocab_size",
    "d_model",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "d_ff",
    "max_len",
    "block_size",
    "t5_num_buckets",
    "t5_max_distance",
  ):
    specs.positive(cfg[key], f"model.{key}")
  specs.check(
    cfg.num_heads % cfg.num_kv_heads == 0,
    f"model.num_heads={cfg.num_heads} is not divisible by model.num_kv_heads={cfg.num_kv_heads}",
  )
  head_dim = cfg.head_dim
  if head_dim is None:
    specs.check(
      cfg.d_model % cfg.num_heads == 0,
      f"model.d_model={cfg.d_model} is not divisible by "
      f"model.num_heads={cfg.num_heads}; set model.head_dim",
    )
    head_dim = cfg.d_model // cfg.num_heads
  specs.positive(head_dim, "model.head_dim")
  query_temperature = patterns.uses_temperature(cfg.positions, cfg.query_temperature)
  types = patterns.layer_types(
    cfg.positions,
    cfg.windows,
    cfg.num_layers,
    cfg.get("query_scaling", "none"),
    temperature=query_temperature,
  )
  schemes = {t.scheme for t in types}
  rope_dim = 0
  if any(SCHEMES[t.scheme].rotary for t in types):
    rope_dim = patterns.rotary_dim(head_dim, cfg.rope_fraction)
  # Below this the log-spaced buckets divide by zero and silently give garbage ids.
  specs.check(
    not any(t.scheme == "t5" for t in types)
    or (cfg.t5_num_buckets >= 2 and cfg.t5_max_distance > cfg.t5_num_buckets // 2),
    f"model.t5_max_distance={cfg.t5_max_distance} must exceed half of "
    f"model.t5_num_buckets={cfg.t5_num_buckets} (and num_buckets >= 2)",
  )
  specs.positive(cfg.rope_theta, "model.rope_theta", float)
  # 0.1's name for the memory-linear path, which the flash path replaces.
  impl = "flash" if cfg.attention_impl == "blockwise" else cfg.attention_impl
  attention_impl = specs.choice(impl, ATTENTION_IMPLS, "model.attention_impl")
  specs.check(
    not (
      attention_impl == "xla"
      and cfg.dtype != "float32"
      and any(SCHEMES[t.scheme].has_bias for t in types)
    ),
    f"model.attention_impl=xla adds the ALiBi/T5 bias in model.dtype={cfg.dtype}, which rounds "
    "a bias of 64 to steps of 0.5; use flash or reference for bias layers below float32",
  )
  _check_schemes(cfg, schemes, attention_impl)
  return specs.from_group(
    ModelSpec,
    cfg,
    head_dim=head_dim,
    layers=types,
    period=patterns.period(types),
    input_positions=specs.choice(cfg.input_positions, INPUT_POSITIONS, "model.input_positions"),
    rope_theta=float(cfg.rope_theta),
    rope_dim=rope_dim,
    query_temperature=query_temperature,
    temperature_floor_scale=float(cfg.temperature_floor_scale),
    temperature_attn_scale=float(cfg.temperature_attn_scale),
    tie_embeddings=bool(cfg.tie_embeddings),
    qk_norm=bool(cfg.qk_norm),
    attn_bias=bool(cfg.attn_bias),
    mlp_bias=bool(cfg.mlp_bias),
    norm_eps=float(cfg.norm_eps),
    dtype=DTYPES[specs.choice(cfg.dtype, tuple(DTYPES), "model.dtype")],
    param_dtype=DTYPES[specs.choice(cfg.param_dtype, tuple(DTYPES), "model.param_dtype")],
    attention_impl=attention_impl,
    # A config.json written by 0.1 names it blockwise_above.
    flash_above=specs.positive(
      cfg.get("flash_above", cfg.get("blockwise_above", 4096)), "model.flash_above"
    ),
    remat=specs.choice(cfg.remat, REMAT_POLICIES, "model.remat"),
    remat_scope=specs.choice(cfg.get("remat_scope", "period"), REMAT_SCOPES, "model.remat_scope"),
    scan_unroll=specs.positive(cfg.get("scan_unroll", 1), "model.scan_unroll"),
    loss_chunk=_loss_chunk(cfg.get("loss_chunk", 2048)),
    t5_shared=bool(cfg.get("t5_shared", False)),
    xpos_scale_base=float(cfg.get("xpos_scale_base", 512.0)),
    prope_fraction=float(cfg.get("prope_fraction", 0.75)),
    ssmax_init=float(cfg.get("ssmax_init", 0.43)),
    **_rope_scaling(cfg),
  )


def _number(value):
  """A finite int or float, not a bool (abs(v) < inf is False for NaN and infinities)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < math.inf


def _check_schemes(cfg, schemes, attention_impl):
  """The parameters of the schemes the layers use; unused ones are not checked."""
  get = cfg.get
  if "fire" in schemes:
    specs.positive(get("fire_threshold", 512), "model.fire_threshold", float)
    specs.positive(get("fire_mlp_width", 32), "model.fire_mlp_width")
  if "xpos" in schemes:
    specs.positive(get("xpos_scale_base", 512.0), "model.xpos_scale_base", float)
  if "cope" in schemes:
    specs.check(
      isinstance(get("cope_npos_max", 64), int) and get("cope_npos_max", 64) >= 2,
      f"model.cope_npos_max: expected an integer >= 2, got {get('cope_npos_max')!r}",
    )
    # CoPE's positions are a cumulative sum over each query's whole row of keys.
    specs.check(
      attention_impl in ("auto", "reference"),
      f"model.attention_impl={attention_impl}: cope layers run on the reference path only "
      "(their positions need each query's full row of gates); use auto or reference",
    )
  if "prope" in schemes:
    p = get("prope_fraction", 0.75)
    specs.check(
      _number(p) and 0.0 <= p <= 1.0,
      f"model.prope_fraction: expected a share in [0, 1] of the frequencies that rotate, got {p!r}",
    )
  ssmax = get("ssmax_init", 0.43)
  specs.check(
    _number(ssmax) and ssmax > 0,
    f"model.ssmax_init: expected a positive number, got {ssmax!r}",
  )


def _rope_scaling(cfg):
  """RoPE context extension fields of ModelSpec (schemes/rope.py), all checked whatever the type
  (eval.rope_scaling may pick another type that reads them)."""
  get = cfg.get

  scaling = specs.choice(get("rope_scaling", "none"), rope.ROPE_SCALINGS, "model.rope_scaling")
  factor = get("rope_scaling_factor", 1.0)
  specs.check(
    _number(factor) and factor >= 1,
    f"model.rope_scaling_factor: expected a number >= 1, got {factor!r}",
  )
  original = get("rope_original_len", 0)
  specs.check(
    isinstance(original, int) and not isinstance(original, bool) and original >= 0,
    f"model.rope_original_len: expected 0 (unset) or a positive integer, got {original!r}",
  )
  specs.check(
    scaling not in rope.NEEDS_ORIGINAL_LEN or original > 0,
    f"model.rope_original_len: model.rope_scaling={scaling} needs the pretraining context "
    "length, got 0",
  )
  low = specs.positive(get("rope_low_freq_factor", 1.0), "model.rope_low_freq_factor", float)
  high = specs.positive(get("rope_high_freq_factor", 4.0), "model.rope_high_freq_factor", float)
  specs.check(
    low < high,
    f"model.rope_low_freq_factor={low} must be below model.rope_high_freq_factor={high}",
  )
  fast = specs.positive(get("yarn_beta_fast", 32.0), "model.yarn_beta_fast", float)
  slow = specs.positive(get("yarn_beta_slow", 1.0), "model.yarn_beta_slow", float)
  specs.check(
    fast >= slow, f"model.yarn_beta_fast={fast} must be at least model.yarn_beta_slow={slow}"
  )
  for key in ("yarn_mscale", "yarn_mscale_all_dim"):
    value = get(key, 0.0)
    specs.check(
      _number(value) and value >= 0, f"model.{key}: expected a number >= 0 (0: off), got {value!r}"
    )
  attention_factor = get("yarn_attention_factor", None)
  if attention_factor is not None:
    attention_factor = specs.positive(attention_factor, "model.yarn_attention_factor", float)
  truncate = get("yarn_truncate", True)
  specs.check(
    isinstance(truncate, bool), f"model.yarn_truncate: expected true or false, got {truncate!r}"
  )
  return dict(
    rope_scaling=scaling,
    rope_scaling_factor=float(factor),
    rope_original_len=original,
    rope_low_freq_factor=low,
    rope_high_freq_factor=high,
    yarn_beta_fast=fast,
    yarn_beta_slow=slow,
    yarn_mscale=float(get("yarn_mscale", 0.0)),
    yarn_mscale_all_dim=float(get("yarn_mscale_all_dim", 0.0)),
    yarn_attention_factor=attention_factor,
    yarn_truncate=truncate,
  )
