"""Masks and the attention paths: reference einsum, jax.nn.dot_product_attention, JAX flash,
splash (TPU) and cuDNN (GPU).

All paths take q [B, T, N, H], k and v [B, S, K, H] (GQA: N = K * G), a `Keys` description of
who may see whom, and an optional `bias_fn(q_pos_BT, k_pos_BS) -> [B, N, T, S]`; they agree up
to floating-point rounding. Queries must already carry the softmax scale.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nopejax.model import cpu_kernels
from nopejax.model.schemes.base import Bias, ContentBias

NEG_INF = -1e30  # finite, so fully masked rows of the flash path give no NaN


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
  documents: bool = True  # False: one document per row (segments all equal), no mask needed

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


BiasFn = Bias | Callable[[jax.Array, jax.Array], jax.Array] | None


def joined(x_BSKH):
  """One array of keys (or values) from `reference`'s parts, for the paths that take one."""
  return jnp.concatenate(x_BSKH, axis=1) if isinstance(x_BSKH, tuple) else x_BSKH


def reference(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None):
  """Plain einsum attention with an fp32 softmax: the definition the other paths must match.

  Keys and values may come as tuples of parts along S (a decoding step's cache and its new
  token, kv_cache.py): each part is scored and read apart, and the parts meet only in the
  softmax, so no [B, S, K, H] concatenation is built."""
  k_parts = k_BSKH if isinstance(k_BSKH, tuple) else (k_BSKH,)
  v_parts = v_BSKH if isinstance(v_BSKH, tuple) else (v_BSKH,)
  B, T, N, H = q_BTNH.shape
  K = k_parts[0].shape[2]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  logits_BKGTS = jnp.concatenate(
    [_einsum32("BTKGH,BSKH->BKGTS", q_BTKGH, k) for k in k_parts], axis=-1
  )
  allowed_BTS = keys.mask()
  if isinstance(bias_fn, ContentBias):
    logits_BKGTS += bias_fn.fn(bias_fn.params, q_BTKGH, logits_BKGTS, allowed_BTS, keys)
  elif bias_fn is not None:
    bias_BNTS = bias_fn(keys.q_pos_BT, keys.k_pos_BS)
    logits_BKGTS += bias_BNTS.reshape(B, K, N // K, T, -1)
  # An additive mask of [B, T, S] rather than a select on the [B, K, G, T, S] logits: the same
  # probabilities (NEG_INF absorbs any logit), but the softmax backward needs no mask of its own
  # (30% less time in a CPU attention layer's forward and backward).
  mask_BTS = jnp.where(allowed_BTS, 0.0, NEG_INF)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS + mask_BTS[:, None, None], axis=-1)
  # Heads-major output, transposed after: XLA then runs probs @ values per (b, k), the layout
  # its CPU dot kernels take without transposing the values (or a decoding cache) first.
  probs_BKGTS = probs_BKGTS.astype(v_parts[0].dtype)
  ends = np.cumsum([v.shape[1] for v in v_parts])
  out_BKGTH = sum(
    jnp.einsum("BKGTS,BSKH->BKGTH", probs_BKGTS[..., end - v.shape[1] : end], v)
    for v, end in zip(v_parts, ends)
  )
  return jnp.transpose(out_BKGTH, (0, 3, 1, 2, 4)).reshape(B, T, N, H)


def decode_kernel(q_BTNH, k_cache, v_cache, repeat, k_new_BTKH, v_new_BTKH, keys, bias_fn=None):
  """One decoding step (T = 1) through the CPU kernel (cpu_kernels.py): `reference`'s result,
  with the layer's cache read in place. k_cache, v_cache: the cache arrays as the Attention layer
  holds them ([B, K, S, H], or stacked over the period's repeats with `repeat` the layer's); the
  step's own key and value come apart, as `reference`'s second parts."""
  B, T, N, H = q_BTNH.shape
  K = k_new_BTKH.shape[2]
  mask_BTS = jnp.where(keys.mask(), 0.0, NEG_INF)
  bias_BNTS = jnp.broadcast_to(mask_BTS[:, None], (B, N, *mask_BTS.shape[1:]))
  if bias_fn is not None:
    bias_BNTS = bias_BNTS + bias_fn(keys.q_pos_BT, keys.k_pos_BS)
  out_BKGH = cpu_kernels.decode_attention(
    q_BTNH.reshape(B, K, N // K, H),
    k_cache,
    v_cache,
    0 if repeat is None else repeat,
    k_new_BTKH.reshape(B, K, H),
    v_new_BTKH.reshape(B, K, H),
    bias_BNTS.reshape(B, K, N // K, -1),
  )
  return out_BKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)


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


def _block_ranges(x_nB_b, valid_n_b, lo, hi):
  """Per block and batch row: (min, max) of x over the block's valid entries."""
  return (
    jnp.where(valid_n_b, x_nB_b, hi).min(-1),
    jnp.where(valid_n_b, x_nB_b, lo).max(-1),
  )


@dataclasses.dataclass(frozen=True)
class _Blocked:
  """Queries and keys split into blocks, and which (query block, key block) pairs hold any
  allowed pair: the others are skipped in both passes."""

  q_idx_nt: jax.Array
  q_pos_nBt: jax.Array
  q_seg_nBt: jax.Array
  k_idx_ms: jax.Array
  k_pos_mBs: jax.Array
  k_seg_mBs: jax.Array
  live_nm: jax.Array  # [query blocks, key blocks] bool
  window: Window


def _block_layout(meta, window, bq, bk):
  q_idx_T, k_idx_S, q_pos_BT, k_pos_BS, q_seg_BT, k_seg_BS = meta
  T, S = q_idx_T.shape[0], k_idx_S.shape[0]
  big = jnp.iinfo(jnp.int32).max
  # Padded queries match no key (segment -1 vs -2) and padded keys come after every query.
  q_idx_nt = _blocks(q_idx_T, bq, 0)
  k_idx_ms = _blocks(jnp.pad(k_idx_S, (0, -S % bk), constant_values=big), bk, 0)
  q_pos_nBt, k_pos_mBs = _blocks(q_pos_BT, bq, 1), _blocks(k_pos_BS, bk, 1)
  q_seg_nBt = _blocks(jnp.pad(q_seg_BT, ((0, 0), (0, -T % bq)), constant_values=-1), bq, 1)
  k_seg_mBs = _blocks(jnp.pad(k_seg_BS, ((0, 0), (0, -S % bk)), constant_values=-2), bk, 1)
  q_ok_nt = _blocks(jnp.arange(T) < T, bq, 0)
  k_ok_ms = _blocks(jnp.arange(S) < S, bk, 0)
  q_ok_nBt, k_ok_mBs = q_ok_nt[:, None], k_ok_ms[:, None]
  # Block summaries per batch row; a pair is live when some row may have an allowed pair.
  qi_max_n = jnp.where(q_ok_nt, q_idx_nt, -big).max(-1)
  ki_min_m = jnp.where(k_ok_ms, k_idx_ms, big).min(-1)
  qs_lo, qs_hi = _block_ranges(q_seg_nBt, q_ok_nBt, -big, big)
  ks_lo, ks_hi = _block_ranges(k_seg_mBs, k_ok_mBs, -big, big)
  live_nmB = (qs_lo[:, None] <= ks_hi[None]) & (ks_lo[None] <= qs_hi[:, None])
  if window.kind != "full":
    qp_lo, qp_hi = _block_ranges(q_pos_nBt, q_ok_nBt, -big, big)
    kp_lo, kp_hi = _block_ranges(k_pos_mBs, k_ok_mBs, -big, big)
    if window.kind == "sliding":
      live_nmB &= qp_lo[:, None] - kp_hi[None] < window.size
    else:
      w = window.size
      live_nmB &= (qp_lo[:, None] // w <= kp_hi[None] // w) & (
        kp_lo[None] // w <= qp_hi[:, None] // w
      )
  live_nm = live_nmB.any(-1) & (qi_max_n[:, None] >= ki_min_m[None])
  return _Blocked(q_idx_nt, q_pos_nBt, q_seg_nBt, k_idx_ms, k_pos_mBs, k_seg_mBs, live_nm, window)


def _live_span(live_n):
  """[first, last + 1) of the live entries (0, 0 when none): the loop bounds over blocks."""
  n = live_n.shape[0]
  any_live = live_n.any()
  first = jnp.argmax(live_n)
  last = n - jnp.argmax(live_n[::-1])
  return jnp.where(any_live, first, 0), jnp.where(any_live, last, 0)


def _einsum32(subscripts, x, y):
  """einsum with x cast to y's dtype (probabilities to bf16 for the matmul, as flash kernels do),
  accumulated in fp32."""
  return jnp.einsum(subscripts, x.astype(y.dtype), y, preferred_element_type=jnp.float32)


def _block_logits(q_BtKGH, k_BsKH, lay, i, j, bias_fn, consts):
  """fp32 logits of query block i against key block j, bias added and the mask applied."""
  B, t, K, G, _ = q_BtKGH.shape
  logits_BKGts = _einsum32("BtKGH,BsKH->BKGts", q_BtKGH, k_BsKH)
  q_pos_Bt, k_pos_Bs = lay.q_pos_nBt[i], lay.k_pos_mBs[j]
  if bias_fn is not None:
    logits_BKGts += bias_fn(consts, q_pos_Bt, k_pos_Bs).reshape(B, K, G, t, -1)
  allowed_Bts = mask(
    lay.q_idx_nt[i],
    lay.k_idx_ms[j],
    q_pos_Bt,
    k_pos_Bs,
    lay.q_seg_nBt[i],
    lay.k_seg_mBs[j],
    lay.window,
  )
  return jnp.where(allowed_Bts[:, None, None], logits_BKGts, NEG_INF), allowed_Bts


def _flash_forward(static, q_BTNH, k_BSKH, v_BSKH, meta, consts):
  window, bias_fn, bq, bk = static
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  G = N // K
  lay = _block_layout(meta, window, bq, bk)
  q_nBtKGH = _blocks(q_BTNH.reshape(B, T, K, G, H), bq, 1)
  k_mBsKH, v_mBsKH = _blocks(k_BSKH, bk, 1), _blocks(v_BSKH, bk, 1)

  def one_query_block(i):
    q_BtKGH = q_nBtKGH[i]

    def one_key_block(j, carry):
      def attend(carry):
        m_BKGt, l_BKGt, acc_BtKGH = carry
        logits_BKGts, allowed_Bts = _block_logits(q_BtKGH, k_mBsKH[j], lay, i, j, bias_fn, consts)
        m_new = jnp.maximum(m_BKGt, logits_BKGts.max(-1))
        p_BKGts = jnp.where(allowed_Bts[:, None, None], jnp.exp(logits_BKGts - m_new[..., None]), 0)
        correction = jnp.exp(m_BKGt - m_new)
        pv_BtKGH = _einsum32("BKGts,BsKH->BtKGH", p_BKGts, v_mBsKH[j])
        return (
          m_new,
          l_BKGt * correction + p_BKGts.sum(-1),
          acc_BtKGH * jnp.moveaxis(correction, -1, 1)[..., None] + pv_BtKGH,
        )

      return jax.lax.cond(lay.live_nm[i, j], attend, lambda c: c, carry)

    init = (
      jnp.full((B, K, G, bq), NEG_INF, jnp.float32),
      jnp.zeros((B, K, G, bq), jnp.float32),
      jnp.zeros((B, bq, K, G, H), jnp.float32),
    )
    first, last = _live_span(lay.live_nm[i])
    m_BKGt, l_BKGt, acc_BtKGH = jax.lax.fori_loop(first, last, one_key_block, init)
    l_safe = jnp.maximum(l_BKGt, 1e-30)
    out_BtKGH = acc_BtKGH / jnp.moveaxis(l_safe, -1, 1)[..., None]
    return out_BtKGH.astype(q_BTNH.dtype), m_BKGt + jnp.log(l_safe)

  out_nBtKGH, lse_nBKGt = jax.lax.map(one_query_block, jnp.arange(lay.live_nm.shape[0]))
  out_BTNH = jnp.moveaxis(out_nBtKGH, 0, 1).reshape(B, -1, N, H)[:, :T]
  return out_BTNH, lse_nBKGt


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(static, q_BTNH, k_BSKH, v_BSKH, meta, consts):
  return _flash_forward(static, q_BTNH, k_BSKH, v_BSKH, meta, consts)[0]


def _flash_fwd(static, q_BTNH, k_BSKH, v_BSKH, meta, consts):
  out_BTNH, lse_nBKGt = _flash_forward(static, q_BTNH, k_BSKH, v_BSKH, meta, consts)
  return out_BTNH, (q_BTNH, k_BSKH, v_BSKH, meta, consts, out_BTNH, lse_nBKGt)


def _flash_bwd(static, residuals, dout_BTNH):
  """Recomputes each live block's probabilities: one pass over key blocks, each accumulating
  its dK and dV over the query blocks that see it, and adding into dQ and the bias parameters."""
  window, bias_fn, bq, bk = static
  q_BTNH, k_BSKH, v_BSKH, meta, consts, out_BTNH, lse_nBKGt = residuals
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  G = N // K
  lay = _block_layout(meta, window, bq, bk)
  q_nBtKGH = _blocks(q_BTNH.reshape(B, T, K, G, H), bq, 1)
  do_nBtKGH = _blocks(dout_BTNH.reshape(B, T, K, G, H), bq, 1)
  # D = rowsum(dO * O), the softmax backward's correction term, per query.
  delta_BTKG = jnp.sum(dout_BTNH.astype(jnp.float32) * out_BTNH.astype(jnp.float32), -1).reshape(
    B, T, K, G
  )
  delta_nBKGt = _blocks(delta_BTKG, bq, 1).transpose(0, 1, 3, 4, 2)
  k_mBsKH, v_mBsKH = _blocks(k_BSKH, bk, 1), _blocks(v_BSKH, bk, 1)
  learned = lambda c: jnp.issubdtype(c.dtype, jnp.inexact)  # integer constants get no gradient

  def one_key_block(carry, j):
    dq_nBtKGH, dconsts = carry
    k_BsKH, v_BsKH = k_mBsKH[j], v_mBsKH[j]

    def one_query_block(i, inner):
      # dQ stays out of the cond: a conditional that returned the whole [T]-sized dQ would
      # copy it at every block pair; one block of it is added after the cond instead.
      dk_BsKH, dv_BsKH, dq_nBtKGH, dconsts = inner
      q_BtKGH, do_BtKGH = q_nBtKGH[i], do_nBtKGH[i]

      def attend(acc):
        dk_BsKH, dv_BsKH, dconsts = acc

        def logits_of(cs):
          return _block_logits(q_BtKGH, k_BsKH, lay, i, j, bias_fn, cs)

        if bias_fn is None:
          logits_BKGts, allowed_Bts = logits_of(consts)
        else:
          (logits_BKGts, allowed_Bts), bias_vjp = jax.vjp(logits_of, consts)
        p_BKGts = jnp.where(
          allowed_Bts[:, None, None], jnp.exp(logits_BKGts - lse_nBKGt[i][..., None]), 0.0
        )
        dv_BsKH = dv_BsKH + _einsum32("BKGts,BtKGH->BsKH", p_BKGts, do_BtKGH)
        dp_BKGts = _einsum32("BtKGH,BsKH->BKGts", do_BtKGH, v_BsKH)
        ds_BKGts = p_BKGts * (dp_BKGts - delta_nBKGt[i][..., None])
        dk_BsKH = dk_BsKH + _einsum32("BKGts,BtKGH->BsKH", ds_BKGts, q_BtKGH)
        dq_BtKGH = _einsum32("BKGts,BsKH->BtKGH", ds_BKGts, k_BsKH)
        if bias_fn is not None:
          (d_cs,) = bias_vjp((ds_BKGts, np.zeros(allowed_Bts.shape, jax.dtypes.float0)))
          dconsts = jax.tree.map(
            lambda d, dc, c: d + dc if learned(c) else d, dconsts, d_cs, consts
          )
        return (dk_BsKH, dv_BsKH, dconsts), dq_BtKGH

      def skip(acc):
        return acc, jnp.zeros(q_BtKGH.shape, jnp.float32)

      (dk_BsKH, dv_BsKH, dconsts), dq_BtKGH = jax.lax.cond(
        lay.live_nm[i, j], attend, skip, (dk_BsKH, dv_BsKH, dconsts)
      )
      return dk_BsKH, dv_BsKH, dq_nBtKGH.at[i].add(dq_BtKGH), dconsts

    zeros = jnp.zeros((B, bk, K, H), jnp.float32)
    first, last = _live_span(lay.live_nm[:, j])
    dk_BsKH, dv_BsKH, dq_nBtKGH, dconsts = jax.lax.fori_loop(
      first, last, one_query_block, (zeros, zeros, dq_nBtKGH, dconsts)
    )
    return (dq_nBtKGH, dconsts), (dk_BsKH, dv_BsKH)

  dconsts0 = jax.tree.map(lambda c: jnp.zeros(c.shape, jnp.float32) if learned(c) else c, consts)
  dq0 = jnp.zeros(q_nBtKGH.shape, jnp.float32)
  (dq_nBtKGH, dconsts), (dk_mBsKH, dv_mBsKH) = jax.lax.scan(
    one_key_block, (dq0, dconsts0), jnp.arange(lay.live_nm.shape[1])
  )
  unblock = lambda x, length: jnp.moveaxis(x, 0, 1).reshape((B, -1) + x.shape[3:])[:, :length]
  dq_BTNH = unblock(dq_nBtKGH, T).reshape(B, T, N, H).astype(q_BTNH.dtype)
  dk_BSKH = unblock(dk_mBsKH, S).astype(k_BSKH.dtype)
  dv_BSKH = unblock(dv_mBsKH, S).astype(v_BSKH.dtype)
  dconsts = jax.tree.map(lambda d, c: d.astype(c.dtype) if learned(c) else None, dconsts, consts)
  return dq_BTNH, dk_BSKH, dv_BSKH, None, dconsts


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None, *, block_size=512):
  """Flash attention in JAX (Dao et al. 2022): online softmax over key blocks, and a custom VJP
  that recomputes each block's probabilities, so memory is linear in length in both passes.

  Block pairs that the causal order, the documents or the window leave empty are skipped in
  both passes (from per-block index, position and segment ranges, so packed rows and the
  gathered keys of context parallelism skip too). The bias is computed per block from
  positions; its parameters (T5's table and the like) get their gradients through the custom
  VJP (`jax.closure_convert` lifts them out of `bias_fn`). Logits, softmax statistics and all
  gradient accumulators are fp32.
  """
  B, T = q_BTNH.shape[:2]
  S = k_BSKH.shape[1]
  bq, bk = min(block_size, T), min(block_size, S)
  meta = (keys.q_idx_T, keys.k_idx_S, keys.q_pos_BT, keys.k_pos_BS, keys.q_seg_BT, keys.k_seg_BS)
  fn, params = None, ()
  if isinstance(bias_fn, Bias):
    fn, params = bias_fn.fn, bias_fn.params
  elif bias_fn is not None:  # a plain closure: lift the arrays it closes over into parameters
    example = (jnp.zeros((B, bq), jnp.int32), jnp.zeros((B, bk), jnp.int32))
    closed, consts = jax.closure_convert(bias_fn, *example)
    fn, params = (lambda cs, q_pos, k_pos: closed(q_pos, k_pos, *cs)), list(consts)
  return _flash((keys.window, fn, bq, bk), q_BTNH, k_BSKH, v_BSKH, meta, params)


def cudnn(q_BTNH, k_BSKH, v_BSKH, keys, bias_fn: BiasFn = None):
  """cuDNN flash attention (GPU, fp16/bf16, no bias): causal, with sliding windows as cuDNN's
  local window. Without packed documents no mask is passed at all; packed documents and chunked
  windows need the dense mask, so `auto` gives those layers the flash path instead."""
  if bias_fn is not None:
    raise ValueError("model.attention_impl=cudnn: cuDNN attention takes no ALiBi/T5 bias")
  window = keys.window
  local = (window.size - 1, 0) if window.kind == "sliding" else None
  dense = keys.documents or window.kind == "chunked"
  return jax.nn.dot_product_attention(
    q_BTNH,
    k_BSKH,
    v_BSKH,
    mask=keys.mask()[:, None] if dense else None,
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


@dataclasses.dataclass(frozen=True)
class ContextAxis:
  """The mesh axis that shards the sequence (`mesh.context`), and its size (1: none)."""

  name: str | None = None
  size: int = 1


def context_axis(length):
  """The context axis that shards a sequence of `length` tokens: none outside a mesh with one,
  and none for a length it does not divide (initialization's one token, odd evaluation
  lengths), which then runs unsharded."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "context" not in mesh.axis_names or mesh.shape["context"] == 1:
    return ContextAxis()
  if length % mesh.shape["context"]:
    return ContextAxis()
  return ContextAxis("context", mesh.shape["context"])


def context_parallel(
  path, q_BTNH, k_BSKH, v_BSKH, keys, bias_fn, *, context, batch_axes, head_axes, kv_head_axes
):
  """Attention with the sequence sharded over `context`: each device keeps its queries and
  gathers every key and value (and their indices, positions and segments) over the axis.

  Causality, documents and windows come from the gathered indices, positions and segments, so
  any sequence order works: the train step lays the sequence out so each device holds one chunk
  from each end (`zigzag`), and no device idles on the causally masked half. The backward pass
  of the gather is a reduce-scatter of the key and value gradients.
  """
  if q_BTNH.shape[1] != k_BSKH.shape[1]:
    raise ValueError("mesh.context > 1 cannot decode from a KV cache; use mesh.context=1")
  P = jax.sharding.PartitionSpec
  axis = context.name

  if bias_fn is not None and not isinstance(bias_fn, Bias):
    raise TypeError("context parallelism needs the bias as a schemes.base.Bias")
  bias_params = () if bias_fn is None else bias_fn.params

  def attend(q_BtNH, k_BsKH, v_BsKH, idx_t, pos_Bt, seg_Bt, bias_params):
    gather = functools.partial(jax.lax.all_gather, axis_name=axis, tiled=True)
    local = Keys(
      idx_t,
      gather(idx_t, axis=0),
      pos_Bt,
      gather(pos_Bt, axis=1),
      seg_Bt,
      gather(seg_Bt, axis=1),
      keys.window,
      keys.documents,
    )
    bias = None if bias_fn is None else dataclasses.replace(bias_fn, params=bias_params)
    return path(q_BtNH, gather(k_BsKH, axis=1), gather(v_BsKH, axis=1), local, bias)

  rows = P(batch_axes, axis)
  return jax.shard_map(
    attend,
    in_specs=(
      P(batch_axes, axis, head_axes),
      P(batch_axes, axis, kv_head_axes),
      P(batch_axes, axis, kv_head_axes),
      P(axis),
      rows,
      rows,
      jax.tree.map(lambda _: P(), bias_params),
    ),
    out_specs=P(batch_axes, axis, head_axes),
    # Unchecked: the flash loops carry values whose replication jax cannot type; the transpose
    # then sums the gradients of replicated inputs (a bias's parameters) over the mesh.
    check_vma=False,
  )(q_BTNH, k_BSKH, v_BSKH, keys.q_idx_T, keys.q_pos_BT, keys.q_seg_BT, bias_params)


def zigzag(length, shards):
  """The sequence order of causal load balancing: split into 2 * shards chunks, shard c holds
  chunks c and 2 * shards - 1 - c, so every shard has as many early as late queries. A length
  that splits only into `shards` chunks keeps its order (correct, not balanced)."""
  if shards == 1 or length % (2 * shards):
    return np.arange(length, dtype=np.int32)
  chunks = np.arange(length, dtype=np.int32).reshape(2 * shards, -1)
  order = [i for c in range(shards) for i in (c, 2 * shards - 1 - c)]
  return chunks[order].reshape(-1)


PATHS = {
  "reference": reference,
  "xla": xla,
  "flash": flash,
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
  flash_above,
  backend=None,
  head_dim=None,
  dtype=None,
  key_length=None,
  block_size=512,
  window="full",
  documents=True,
  content=False,
):
  """The attention path for one layer; `auto` picks by backend, bias, window, shapes and dtype,
  and never a path that would then refuse the shapes.

  TPU: splash for bias-free layers whose length and head_dim fit its 128-lane blocks and whose
  length the block size divides. GPU: cuDNN for bias-free, unchunked fp16/bf16 layers with
  head_dim <= 128 over unpacked rows (`documents=False`: jax's cuDNN call takes no segment ids,
  only a dense mask). Every other layer on an accelerator, and any layer longer than `flash_above`
  on a CPU, takes the JAX flash path (memory linear in length, biases per block); short CPU
  layers the reference einsum, the fastest there at training lengths. The kernels need queries
  and keys to be the same tokens (key_length None or == length; not so when decoding from a KV
  cache). Layers with a content-dependent bias (CoPE) always take the reference path. A CPU
  decoding step (one query against a cache) of an fp32 model takes `decode_kernel` where the
  kernel builds (cpu_kernels.py).
  """
  if content:
    return "reference"
  if impl != "auto":
    return impl
  backend = backend or _backend()
  if (
    backend == "cpu"
    and length == 1
    and key_length not in (None, 1)
    and dtype is not None
    and jnp.dtype(dtype) == jnp.dtype(jnp.float32)
    and cpu_kernels.available()
  ):
    return "decode_kernel"
  kernel = not has_bias and key_length in (None, length)
  if (
    kernel
    and backend == "tpu"
    and length % 128 == 0
    and length % min(block_size, length) == 0
    and (head_dim or 0) % 128 == 0
  ):
    return "splash"
  if (
    kernel
    and backend in ("gpu", "cuda")
    and not documents
    and window != "chunked"
    and dtype is not None
    and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    and head_dim is not None
    and head_dim <= 128
    and head_dim % 8 == 0
  ):
    return "cudnn"
  if backend != "cpu" or length > flash_above:
    return "flash"
  return "reference"
