"""Masks and the three attention paths: reference einsum, jax.nn.dot_product_attention, blockwise.

All paths take q [B, T, N, H], k and v [B, S, K, H] (GQA: N = K * G), a `Keys` description of
who may see whom, and an optional `bias_fn(q_pos_BT, k_pos_BS) -> [B, N, T, S]`; they agree up
to floating-point rounding. Queries must already carry the softmax scale.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite, so fully masked blocks of the blockwise path give no NaN


@dataclasses.dataclass(frozen=True)
class Window:
  kind: str = "full"  # full | sliding | chunked
  size: int = 0


def mask(q_idx_T, k_idx_S, q_pos_BT, k_pos_BS, q_seg_BT, k_seg_BS, window):
  """Who may attend to whom: [B, T, S] bool.

  Causality is by index in the sequence (so packed rows stay causal); documents by segment id;
  windows by position, so a packed document's window starts at its own first token.
  """
  allowed_BTS = (q_idx_T[:, None] >= k_idx_S[None, :])[None]
  allowed_BTS &= q_seg_BT[:, :, None] == k_seg_BS[:, None, :]
  if window.kind == "sliding":
    allowed_BTS &= q_pos_BT[:, :, None] - k_pos_BS[:, None, :] < window.size
  elif window.kind == "chunked":
    allowed_BTS &= q_pos_BT[:, :, None] // window.size == k_pos_BS[:, None, :] // window.size
  return allowed_BTS


@dataclasses.dataclass(frozen=True)
class Keys:
  """Indices, positions and segment ids of queries and keys, and the layer's window."""

  q_idx_T: jax.Array
  k_idx_S: jax.Array
  q_pos_BT: jax.Array
  k_pos_BS: jax.Array
  q_seg_BT: jax.Array
  k_seg_BS: jax.Array
  window: Window

  def mask(self):
    return mask(
      self.q_idx_T,
      self.k_idx_S,
      self.q_pos_BT,
      self.k_pos_BS,
      self.q_seg_BT,
      self.k_seg_BS,
      self.window,
    )


BiasFn = Callable[[jax.Array, jax.Array], jax.Array] | None


def reference(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None):
  """Plain einsum attention with an fp32 softmax: the definition the other paths must match."""
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  logits_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH).astype(jnp.float32)
  if bias_fn is not None:
    bias_BNTS = bias_fn(keys.q_pos_BT, keys.k_pos_BS)
    logits_BKGTS += bias_BNTS.reshape(B, K, N // K, T, -1)
  # An additive mask of [B, T, S] rather than a select on the [B, K, G, T, S] logits: the same
  # probabilities (NEG_INF absorbs any logit), but the softmax backward needs no mask of its own
  # (30% less time in a CPU attention layer's forward and backward).
  mask_BTS = jnp.where(keys.mask(), 0.0, NEG_INF)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS + mask_BTS[:, None, None], axis=-1)
  out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS.astype(v_BSKH.dtype), v_BSKH)
  return out_BTKGH.reshape(B, T, N, H)


def xla(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None):
  """jax.nn.dot_product_attention: XLA on CPU/TPU, cuDNN flash attention on GPU when it applies."""
  bias = None if bias_fn is None else bias_fn(keys.q_pos_BT, keys.k_pos_BS).astype(q_BTNH.dtype)
  return jax.nn.dot_product_attention(
    q_BTNH, k_BSKH, v_BSKH, bias=bias, mask=keys.mask()[:, None], scale=1.0
  )


def _blocks(x, size, axis):
  """Pads `axis` to a multiple of `size` and splits it: [..., n, size, ...] with n first."""
  length = x.shape[axis]
  pad = -length % size
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  x = jnp.pad(x, widths)
  x = x.reshape(x.shape[:axis] + ((length + pad) // size, size) + x.shape[axis + 1 :])
  return jnp.moveaxis(x, axis, 0)


def blockwise(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None, *, block_size=512):
  """Online-softmax attention over key blocks, one query block at a time.

  Peak memory is O(T * block_size) rather than O(T * S), which is what lets a CPU evaluate
  16k-token contexts. Padded keys get an index past every query, so causality masks them.
  """
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  G = N // K
  bq, bk = min(block_size, T), min(block_size, S)
  q_nBtKGH = _blocks(q_BTNH.reshape(B, T, K, G, H), bq, 1)
  q_idx_nt = _blocks(keys.q_idx_T, bq, 0)
  q_pos_nBt = _blocks(keys.q_pos_BT, bq, 1)
  q_seg_nBt = _blocks(keys.q_seg_BT, bq, 1)
  k_mBsKH = _blocks(k_BSKH, bk, 1)
  v_mBsKH = _blocks(v_BSKH, bk, 1)
  k_idx_S = jnp.pad(keys.k_idx_S, (0, -S % bk), constant_values=jnp.iinfo(jnp.int32).max)
  k_idx_ms = _blocks(k_idx_S, bk, 0)
  k_pos_mBs = _blocks(keys.k_pos_BS, bk, 1)
  k_seg_mBs = _blocks(keys.k_seg_BS, bk, 1)

  def one_query_block(q_args):
    q_BtKGH, q_idx_t, q_pos_Bt, q_seg_Bt = q_args
    t = q_BtKGH.shape[1]

    def one_key_block(carry, k_args):
      m_BKGt, l_BKGt, acc_BtKGH = carry
      k_BsKH, v_BsKH, k_idx_s, k_pos_Bs, k_seg_Bs = k_args
      logits_BKGts = jnp.einsum("BtKGH,BsKH->BKGts", q_BtKGH, k_BsKH).astype(jnp.float32)
      if bias_fn is not None:
        logits_BKGts += bias_fn(q_pos_Bt, k_pos_Bs).reshape(B, K, G, t, -1)
      allowed_Bts = mask(q_idx_t, k_idx_s, q_pos_Bt, k_pos_Bs, q_seg_Bt, k_seg_Bs, keys.window)
      logits_BKGts = jnp.where(allowed_Bts[:, None, None], logits_BKGts, NEG_INF)
      m_new = jnp.maximum(m_BKGt, logits_BKGts.max(-1))
      p_BKGts = jnp.exp(logits_BKGts - m_new[..., None])
      p_BKGts = jnp.where(allowed_Bts[:, None, None], p_BKGts, 0.0)
      correction = jnp.exp(m_BKGt - m_new)
      l_new = l_BKGt * correction + p_BKGts.sum(-1)
      pv_BtKGH = jnp.einsum("BKGts,BsKH->BtKGH", p_BKGts.astype(v_BsKH.dtype), v_BsKH)
      acc_new = acc_BtKGH * jnp.moveaxis(correction, -1, 1)[..., None] + pv_BtKGH
      return (m_new, l_new, acc_new), None

    init = (
      jnp.full((B, K, G, t), NEG_INF, jnp.float32),
      jnp.zeros((B, K, G, t), jnp.float32),
      jnp.zeros((B, t, K, G, H), jnp.float32),
    )
    (_, l_BKGt, acc_BtKGH), _ = jax.lax.scan(
      one_key_block, init, (k_mBsKH, v_mBsKH, k_idx_ms, k_pos_mBs, k_seg_mBs)
    )
    return acc_BtKGH / jnp.moveaxis(jnp.maximum(l_BKGt, 1e-30), -1, 1)[..., None]

  out_nBtKGH = jax.lax.map(one_query_block, (q_nBtKGH, q_idx_nt, q_pos_nBt, q_seg_nBt))
  out_BTKGH = jnp.moveaxis(out_nBtKGH, 0, 1).reshape(B, -1, K, G, H)[:, :T]
  return out_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)


def cudnn(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None):
  """cuDNN flash attention (GPU, fp16/bf16, no bias); causality and sliding windows let it skip
  blocks, the mask adds documents (and chunks) on top."""
  if bias_fn is not None:
    raise ValueError("model.attention_impl=cudnn: cuDNN attention takes no ALiBi/T5 bias")
  window = keys.window
  local = (window.size - 1, 0) if window.kind == "sliding" else None
  return jax.nn.dot_product_attention(
    q_BTNH,
    k_BSKH,
    v_BSKH,
    mask=keys.mask()[:, None],
    scale=1.0,
    is_causal=True,
    local_window_size=local,
    implementation="cudnn",
  )


def _runs(seg_BT, chunk_BT):
  """Ids that change wherever the segment or the chunk changes: equal ids = same document chunk."""
  change_BT = (seg_BT[:, 1:] != seg_BT[:, :-1]) | (chunk_BT[:, 1:] != chunk_BT[:, :-1])
  return jnp.cumsum(
    jnp.concatenate([jnp.ones_like(change_BT[:, :1]), change_BT], 1), 1, dtype=jnp.int32
  )


def splash(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None, *, block_size=512, partition=None):
  """TPU Pallas splash attention: flash attention that skips blocks the mask empties.

  Splash masks are by index: causal is a CausalMask, a sliding window a LocalMask (within a
  document, index and position differences agree); a chunked window turns into segment ids that
  change at every chunk boundary of the *positions*, so packed documents keep their own chunks
  exactly as `mask` says. GQA runs the MQA kernel once per kv head. `partition` =
  (batch mesh axes, kv-head mesh axes) runs it under shard_map inside a mesh.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # TPU only; imported on use
    splash_attention_kernel as kernels,
  )
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_mask as masks,
  )

  if bias_fn is not None:
    raise ValueError("model.attention_impl=splash: splash attention takes no ALiBi/T5 bias")
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  G = N // K
  window = keys.window
  if window.kind == "sliding":
    base = masks.LocalMask((T, S), (window.size - 1, 0), offset=0)
  else:
    base = masks.CausalMask((T, S))
  q_seg_BT, k_seg_BS = keys.q_seg_BT, keys.k_seg_BS
  if window.kind == "chunked":
    q_seg_BT = _runs(q_seg_BT, keys.q_pos_BT // window.size)
    k_seg_BS = _runs(k_seg_BS, keys.k_pos_BS // window.size)
  bq, bk = min(block_size, T), min(block_size, S)
  if T % bq or S % bk:
    raise ValueError(
      f"model.attention_impl=splash: block {bq}x{bk} must divide the query and key lengths {T}x{S}"
    )
  blocks = kernels.BlockSizes(
    block_q=bq,
    block_kv=bk,
    block_kv_compute=bk,
    block_q_dkv=bq,
    block_kv_dkv=bk,
    block_kv_dkv_compute=bk,
    block_q_dq=bq,
    block_kv_dq=bk,
  )

  def attend(q_BTKGH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS):
    kernel = kernels.make_splash_mqa(
      masks.MultiHeadMask([base] * G), block_sizes=blocks, head_shards=1, q_seq_shards=1
    )
    one = lambda q_GTH, k_SH, v_SH, seg: kernel(q_GTH, k_SH, v_SH, segment_ids=seg)
    per_kv_head = jax.vmap(one, in_axes=(0, 0, 0, None))
    q_BKGTH = jnp.transpose(q_BTKGH, (0, 2, 3, 1, 4))
    out_BKGTH = jax.vmap(per_kv_head)(
      q_BKGTH,
      jnp.swapaxes(k_BSKH, 1, 2),
      jnp.swapaxes(v_BSKH, 1, 2),
      kernels.SegmentIds(q=q_seg_BT, kv=k_seg_BS),
    )
    return jnp.transpose(out_BKGTH, (0, 3, 1, 2, 4))

  args = (q_BTNH.reshape(B, T, K, G, H), k_BSKH, v_BSKH, q_seg_BT, k_seg_BS)
  if partition is not None:
    P = jax.sharding.PartitionSpec
    batch, heads = partition
    attend = jax.shard_map(
      attend,
      in_specs=(
        P(batch, None, heads),
        P(batch, None, heads),
        P(batch, None, heads),
        P(batch),
        P(batch),
      ),
      out_specs=P(batch, None, heads),
      check_vma=False,
    )
  return attend(*args).reshape(B, T, N, H)


PATHS = {
  "reference": reference,
  "xla": xla,
  "blockwise": blockwise,
  "splash": splash,
  "cudnn": cudnn,
}


def _backend():
  """The platform being compiled for: the context mesh's (aot compiles TPU programs on a CPU
  host), else jax's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def choose(
  impl,
  *,
  has_bias,
  length,
  blockwise_above,
  backend=None,
  head_dim=None,
  dtype=None,
  key_length=None,
):
  """The attention path for one layer; `auto` picks by backend, bias, length, head_dim and dtype.

  TPU: splash for bias-free layers whose length and head_dim fit its 128-lane blocks. GPU:
  cuDNN flash attention for bias-free fp16/bf16 layers with head_dim <= 128. Otherwise the
  blockwise path above `blockwise_above` tokens (memory O(T * block)), else the reference
  einsum, which carries ALiBi/T5 biases and on CPU is the fastest at training lengths. The
  flash kernels need queries and keys to be the same tokens (key_length None or == length; not
  so when decoding from a KV cache).
  """
  if impl != "auto":
    return impl
  backend = backend or _backend()
  flash = not has_bias and key_length in (None, length)
  if flash and backend == "tpu" and length % 128 == 0 and (head_dim or 0) % 128 == 0:
    return "splash"
  if (
    flash
    and backend in ("gpu", "cuda")
    and dtype is not None
    and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    and head_dim is not None
    and head_dim <= 128
    and head_dim % 8 == 0
  ):
    return "cudnn"
  if length > blockwise_above:
    return "blockwise"
  return "reference"
