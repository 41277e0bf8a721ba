"""The language-model loss over sequence chunks, never holding the float32 [B, T, V] logits.

Each chunk of `model.loss_chunk` tokens computes its logits from the final hidden states and the
output head, reduces them to per-token sums at once, and is rematerialized in the backward pass
(`jax.checkpoint`), so memory holds one chunk's logits instead of the whole sequence's: at
vocabulary 128k and 4k tokens, 2 GiB of fp32 logits per sequence become 0.5 GiB per 1k chunk.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

SUMS = ("objective", "ce", "correct")


def _chunk_sums(x_BcD, head_DV, targets_Bc, mask_Bc, z_loss):
  """Masked sums of one chunk: the objective (cross-entropy + z-loss), cross-entropy, correct."""
  logits_BcV = jnp.einsum("BcD,DV->BcV", x_BcD, head_DV, preferred_element_type=jnp.float32)
  logits_BcV = nn.with_logical_constraint(logits_BcV, ("batch", "length", "vocab"))
  logz_Bc = jax.nn.logsumexp(logits_BcV, axis=-1)
  target_Bc = jnp.take_along_axis(logits_BcV, targets_Bc[..., None], -1)[..., 0]
  ce_Bc = logz_Bc - target_Bc
  correct_Bc = (jnp.argmax(logits_BcV, -1) == targets_Bc).astype(jnp.float32)
  return {
    "objective": jnp.sum((ce_Bc + z_loss * logz_Bc**2) * mask_Bc),
    "ce": jnp.sum(ce_Bc * mask_Bc),
    "correct": jnp.sum(correct_Bc * mask_Bc),
  }


def token_sums(x_BTD, head_DV, targets_BT, mask_BT, *, z_loss=0.0, chunk=0):
  """Sums over the masked tokens of [B, T]: objective, ce, correct (float32 scalars).

  chunk 0 (or >= T) computes all logits at once; otherwise T is padded to a multiple of
  `chunk` (padding masked out) and the chunks run in a `lax.scan`, each rematerialized.
  """
  B, T, _ = x_BTD.shape
  mask_BT = mask_BT.astype(jnp.float32)
  if chunk <= 0 or chunk >= T:
    return _chunk_sums(x_BTD, head_DV, targets_BT, mask_BT, z_loss)
  pad = -T % chunk
  blocks = lambda a: jnp.moveaxis(
    jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)).reshape(
      (B, (T + pad) // chunk, chunk) + a.shape[2:]
    ),
    1,
    0,
  )
  one = jax.checkpoint(functools.partial(_chunk_sums, z_loss=z_loss))

  def step(totals, xs):
    x_BcD, targets_Bc, mask_Bc = xs
    sums = one(x_BcD, head_DV, targets_Bc, mask_Bc)
    return {k: totals[k] + sums[k] for k in SUMS}, None

  zeros = {k: jnp.zeros((), jnp.float32) for k in SUMS}
  totals, _ = jax.lax.scan(step, zeros, (blocks(x_BTD), blocks(targets_BT), blocks(mask_BT)))
  return totals
