"""The decoder: pre-norm blocks whose positional scheme and window are static per layer.

Layers are grouped into the pattern's repeating period (`spec.period`) and `nn.scan`ned over its
repeats, so compile time depends on the period, not the depth. Parameters carry logical axis
names for sharding; `init` returns them unboxed as a plain nested dict.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.ad_checkpoint import checkpoint_name

from nopejax.model import attention, kv_cache
from nopejax.model import spec as spec_lib
from nopejax.model.ops import dense, fan_in, lookup, param
from nopejax.model.schemes import SCHEMES, absolute, scaling, t5

# Activation checkpointing policies (`model.remat`), applied per scanned period or per block
# (`model.remat_scope`): what the backward pass may keep instead of recomputing.
REMAT = {
  # Nothing: the block (or period) is recomputed from its input.
  "full": jax.checkpoint_policies.nothing_saveable,
  # Matmuls without batch dimensions: the projections and the MLP, not attention's einsums.
  "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
  # Every matmul, attention's logits and outputs included.
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
  # The query, key and value projections (MaxText's save_qkv_proj).
  "qkv_proj": jax.checkpoint_policies.save_only_these_names("query", "key", "value"),
  # The projections and the attention output: the backward recomputes no attention.
  "qkv_attn_out": jax.checkpoint_policies.save_only_these_names(
    "query", "key", "value", "attention_out"
  ),
}


@functools.cache
def _log_path(layer_indices, layer, impl):
  """Logs each layer type's attention path once per process (traces repeat under jvp/remat)."""
  logging.info(
    "attention: layers %s (%s) use the %s path", ",".join(map(str, layer_indices)), layer, impl
  )


def _splash_partition():
  """(batch, kv-head) mesh axes for splash's shard_map inside a mesh; None outside one."""
  if jax.sharding.get_abstract_mesh().empty:
    return None
  batch, heads = nn.logical_to_mesh_axes(("batch", "kv_heads"))
  return batch, heads


def _partition(bias_fn):
  """Mesh axes of batch and heads for context parallelism's shard_map. A bias covers all heads,
  so bias layers keep every head on each device."""
  # One call per name: within one spec flax drops a mesh axis that repeats (heads, kv_heads).
  (batch,), (heads,), (kv_heads,) = (
    nn.logical_to_mesh_axes((n,)) for n in ("batch", "heads", "kv_heads")
  )
  if bias_fn is not None:
    heads = kv_heads = None
  return dict(batch_axes=batch, head_axes=heads, kv_head_axes=kv_heads)


def path_for(spec, layer, length, *, key_length=None, backend=None, documents=True):
  """The attention path of one layer at `length` queries (and `key_length` keys)."""
  scheme = SCHEMES[layer.scheme]
  return attention.choose(
    spec.attention_impl,
    has_bias=scheme.has_bias,
    content=scheme.content,
    length=length,
    flash_above=spec.flash_above,
    backend=backend,
    head_dim=spec.head_dim,
    dtype=spec.dtype,
    key_length=key_length,
    block_size=spec.block_size,
    window=layer.window,
    documents=documents,
  )


class RMSNorm(nn.Module):
  spec: spec_lib.ModelSpec
  axis: str = "norm"

  @nn.compact
  def __call__(self, x):
    scale = param(
      self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis,), self.spec.param_dtype
    )
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.spec.norm_eps)
    scale_1D = scale.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))  # no implicit rank
    return (x32 * scale_1D).astype(self.spec.dtype)


class Attention(nn.Module):
  spec: spec_lib.ModelSpec
  layer: object  # patterns.LayerType
  cache_len: int = 0  # > 0: decoding through a 'cache' collection sized for this many tokens

  def _proj(self, name, x_BTD, heads, axis):
    s = self.spec
    w_DNH = param(
      self,
      name,
      fan_in(0),
      (s.d_model, heads, s.head_dim),
      ("embed", axis, "head_dim"),
      s.param_dtype,
    )
    y_BTNH = dense(x_BTD, w_DNH.astype(s.dtype))  # BTD,DNH->BTNH
    if s.attn_bias:
      b_NH = param(
        self,
        name + "_bias",
        nn.initializers.zeros,
        (heads, s.head_dim),
        (axis, "head_dim"),
        s.param_dtype,
      )
      y_BTNH += b_NH.astype(s.dtype)[None, None]
    return y_BTNH

  def _cached(self, k_BTKH, v_BTKH, keys, repeat):
    """(keys, values, Keys to attend to, store): `store(after)` is the layer's cache with this
    call's tokens written, put back once the attention output (`after`) exists (kv_cache.py).

    repeat None: the cache holds this layer alone (the prefill creates it so, stacked over the
    scan). Otherwise it holds all `spec.repeats` layers of this block, carried through the scan
    whole, and the layer is the `repeat`-th: the new tokens are written into the stack in place."""
    s = self.spec
    fresh = not self.has_variable("cache", "k")
    num_slots = kv_cache.slots(self.layer, self.cache_len)
    empty = kv_cache.empty(k_BTKH.shape[0], num_slots, s.num_kv_heads, s.head_dim, s.dtype)
    cache = {n: self.variable("cache", n, lambda x=x: x).value for n, x in empty.items()}
    return kv_cache.attend_and_store(
      cache,
      k_BTKH,
      v_BTKH,
      keys,
      fresh=fresh,
      ring=num_slots < self.cache_len,
      repeat=repeat,
    )

  @nn.compact
  def __call__(self, x_BTD, keys, shared, repeat=None):
    s, layer = self.spec, self.layer
    q_BTNH = checkpoint_name(self._proj("q", x_BTD, s.num_heads, "heads"), "query")
    k_BSKH = checkpoint_name(self._proj("k", x_BTD, s.num_kv_heads, "kv_heads"), "key")
    v_BSKH = checkpoint_name(self._proj("v", x_BTD, s.num_kv_heads, "kv_heads"), "value")
    if s.qk_norm:
      q_BTNH = RMSNorm(s, "head_dim", name="q_norm")(q_BTNH)
      k_BSKH = RMSNorm(s, "head_dim", name="k_norm")(k_BSKH)
    scheme = SCHEMES[layer.scheme]
    q_BTNH, k_BSKH = scheme.queries_keys(self, s, q_BTNH, k_BSKH, keys)
    q_BTNH = scaling.scale_queries(self, s, layer.query_scaling, q_BTNH, keys)
    q_BTNH = q_BTNH * s.head_dim**-0.5
    if self.cache_len:
      k_BSKH, v_BSKH, keys, store = self._cached(k_BSKH, v_BSKH, keys, repeat)
    bias_fn = scheme.bias_fn(self, s, shared)
    context = attention.context_axis(x_BTD.shape[1])
    impl = path_for(
      s,
      layer,
      x_BTD.shape[1] // context.size,
      key_length=keys.k_idx_S.shape[0],
      documents=keys.documents,
    )
    _log_path(tuple(i for i, t in enumerate(s.layers) if t == layer), str(layer), impl)
    if impl == "decode_kernel":  # the cache as it was, read in place; the step's parts apart
      cache = self.variables["cache"]
      out_BTNH = attention.decode_kernel(
        q_BTNH, cache["k"], cache["v"], repeat, k_BSKH[1], v_BSKH[1], keys, bias_fn
      )
    else:
      out_BTNH = self._attend(impl, q_BTNH, k_BSKH, v_BSKH, keys, bias_fn, context)
    out_BTNH = checkpoint_name(out_BTNH, "attention_out")
    if self.cache_len:
      for n, x in store(out_BTNH[0, 0, 0, 0]).items():
        self.put_variable("cache", n, x)
    w_NHD = param(
      self,
      "o",
      fan_in(0, 1),
      (s.num_heads, s.head_dim, s.d_model),
      ("heads", "head_dim", "embed"),
      s.param_dtype,
    )
    return dense(out_BTNH.astype(s.dtype), w_NHD.astype(s.dtype), 2)  # BTNH,NHD->BTD

  def _attend(self, impl, q_BTNH, k_BSKH, v_BSKH, keys, bias_fn, context):
    """Attention output [B, T, N, H] by one of attention.PATHS."""
    s = self.spec
    if impl != "reference":  # a decoding step's (cache, new) parts: one array for this path
      k_BSKH, v_BSKH = attention.joined(k_BSKH), attention.joined(v_BSKH)
    path = attention.PATHS[impl]
    if impl == "flash":
      path = functools.partial(path, block_size=s.block_size)
    elif impl == "splash":
      path = functools.partial(path, block_size=s.block_size, partition=_splash_partition())
    if context.size > 1:
      return attention.context_parallel(
        path, q_BTNH, k_BSKH, v_BSKH, keys, bias_fn, context=context, **_partition(bias_fn)
      )
    return path(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn)


class MLP(nn.Module):
  spec: spec_lib.ModelSpec

  def _dense(self, name, x, shape, axes):
    s = self.spec
    w = param(self, name, fan_in(0), shape, axes, s.param_dtype)
    y = dense(x, w.astype(s.dtype))
    if s.mlp_bias:
      y += param(
        self, name + "_bias", nn.initializers.zeros, shape[-1:], axes[-1:], s.param_dtype
      ).astype(s.dtype)[None, None]
    return y

  @nn.compact
  def __call__(self, x_BTD):
    s = self.spec
    gate_BTF = self._dense("gate", x_BTD, (s.d_model, s.d_ff), ("embed", "mlp"))  # BTD,DF->BTF
    up_BTF = self._dense("up", x_BTD, (s.d_model, s.d_ff), ("embed", "mlp"))  # BTD,DF->BTF
    h_BTF = nn.silu(gate_BTF) * up_BTF
    h_BTF = nn.with_logical_constraint(h_BTF, ("batch", "length", "mlp"))
    return self._dense("down", h_BTF, (s.d_ff, s.d_model), ("mlp", "embed"))  # BTF,FD->BTD


class Block(nn.Module):
  spec: spec_lib.ModelSpec
  layer: object
  cache_len: int = 0
  documents: bool = True  # rows may pack several documents (segment ids matter)

  @nn.compact
  def __call__(self, x_BTD, context, repeat=None):
    idx_T, pos_BT, seg_BT, shared = context
    window = attention.Window(self.layer.window, self.layer.window_size)
    keys = attention.Keys(idx_T, idx_T, pos_BT, pos_BT, seg_BT, seg_BT, window, self.documents)
    h_BTD = RMSNorm(self.spec, name="attn_norm")(x_BTD)
    attn = Attention(self.spec, self.layer, self.cache_len, name="attn")
    x_BTD += attn(h_BTD, keys, shared, repeat)
    h_BTD = RMSNorm(self.spec, name="mlp_norm")(x_BTD)
    x_BTD += MLP(self.spec, name="mlp")(h_BTD)
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))


class Period(nn.Module):
  """One repeat of the layer pattern: a Block per LayerType of the period, each static."""

  spec: spec_lib.ModelSpec
  cache_len: int = 0
  documents: bool = True

  @nn.compact
  def __call__(self, x_BTD, context, repeat=None):
    block_cls = Block
    if self.spec.remat != "none" and self.spec.remat_scope == "block":
      # prevent_cse's barriers keep XLA from recomputing the period's blocks together (v5e, 8
      # layers of 4096 tokens, full: 281 MiB of temporaries, 344 without, with reference
      # attention; 23 and 35 on the flash path). XLA's CPU compiler drops them before
      # scheduling, so on a CPU `block` saves about what `period` does.
      block_cls = nn.remat(Block, policy=REMAT[self.spec.remat], prevent_cse=True)
    for i, layer in enumerate(self.spec.period):
      block = block_cls(self.spec, layer, self.cache_len, self.documents, name=f"block_{i}")
      x_BTD = block(x_BTD, context, repeat)
    return x_BTD, None


class Decoder(nn.Module):
  spec: spec_lib.ModelSpec
  cache_len: int = 0  # > 0: decoding with a KV cache (generate.py); 0: the plain forward pass
  logits: bool = True  # False: return (final hidden states, head) for a chunked loss

  @nn.compact
  def __call__(self, tokens_BT, positions_BT, segment_ids_BT=None, indices_T=None):
    """indices_T: the tokens' indices in the sequence (default 0..T-1; decoding steps go on,
    context parallelism permutes them). segment_ids_BT None: one document per row."""
    s = self.spec
    documents = segment_ids_BT is not None
    if not documents:
      segment_ids_BT = jnp.ones(tokens_BT.shape, jnp.int32)
    embedding_VD = param(
      self,
      "embedding",
      nn.initializers.normal(s.d_model**-0.5),
      (s.vocab_size, s.d_model),
      ("vocab", "embed"),
      s.param_dtype,
    )
    x_BTD = lookup(embedding_VD, tokens_BT).astype(s.dtype)
    if s.input_positions == "learned":
      table_LD = param(
        self,
        "pos_embedding",
        nn.initializers.normal(0.02),
        (s.max_len, s.d_model),
        ("length", "embed"),
        s.param_dtype,
      )
      x_BTD += lookup(table_LD, positions_BT).astype(s.dtype)
    elif s.input_positions == "sinusoidal":
      x_BTD += absolute.sinusoidal(positions_BT, s.d_model).astype(s.dtype)
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))

    period = Period
    if s.remat != "none" and s.remat_scope == "period":
      period = nn.remat(Period, policy=REMAT[s.remat], prevent_cse=False)
    if indices_T is None:
      indices_T = jnp.arange(tokens_BT.shape[1], dtype=jnp.int32)
    shards = attention.context_axis(tokens_BT.shape[1]).size
    if shards > 1:
      # Context parallelism: the layers see the sequence in zigzag order, each device one chunk
      # from each end; attention masks by the permuted indices, and the order is undone below.
      order_T = attention.zigzag(tokens_BT.shape[1], shards)
      x_BTD, positions_BT, segment_ids_BT = (
        a[:, order_T] for a in (x_BTD, positions_BT, segment_ids_BT)
      )
      indices_T = indices_T[order_T]
      x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))
    # Parameters every layer reads (the shared T5 table): owned here, broadcast into the scan.
    shared = {}
    if s.t5_shared and any(t.scheme == "t5" for t in s.layers):
      shared["t5_bias"] = t5.t5_table(self, s)
    context = (indices_T, positions_BT, segment_ids_BT, shared)
    scan = functools.partial(
      nn.scan,
      period,
      split_rngs={"params": True},
      length=s.repeats,
      unroll=min(s.scan_unroll, s.repeats),
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    if self.cache_len and self.has_variable("cache", "layers"):
      # Decoding on a filled cache: it is the scan's carry, whole, and each period writes its
      # repeat's slots in place. Scanned over (sliced in, stacked out), XLA would copy every
      # layer's cache on every step.
      layers = scan(
        variable_axes={"params": 0},
        variable_carry="cache",
        in_axes=(nn.broadcast, 0),
      )
      args = (context, jnp.arange(s.repeats, dtype=jnp.int32))
    else:
      layers = scan(variable_axes={"params": 0, "cache": 0}, in_axes=nn.broadcast)
      args = (context,)
    x_BTD, _ = layers(s, self.cache_len, documents, name="layers")(x_BTD, *args)

    if shards > 1:
      x_BTD = x_BTD[:, np.argsort(order_T)]
    x_BTD = RMSNorm(s, name="final_norm")(x_BTD)
    if s.tie_embeddings:
      head_DV = embedding_VD.T
    else:
      head_DV = param(
        self, "lm_head", fan_in(0), (s.d_model, s.vocab_size), ("embed", "vocab"), s.param_dtype
      )
    if not self.logits:
      return x_BTD, head_DV.astype(s.dtype)
    logits_BTV = dense(x_BTD, head_DV.astype(s.dtype))  # BTD,DV->BTV
    return logits_BTV.astype(jnp.float32)
