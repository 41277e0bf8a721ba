"""CoPE (Golovneva et al. 2024, "Contextual Position Encoding: Learning to Count What's
Important"): positions counted by the content. Each query i gates every key j it may see,
g_ij = sigmoid(q_i . k_j); the position of j relative to i is the sum of the gates from j up to
i, p_ij = sum_{t=j..i} g_it, capped at `model.cope_npos_max` - 1; and the logit gains
q_i . e[p_ij], the position embeddings e (one [head_dim] vector per integer position, shared by
the heads, as in the paper's code) interpolated linearly between floor(p) and ceil(p).

q.k is the attention logit itself (queries carry the softmax scale), and the gates see the mask:
keys a query may not attend to (the future, other documents, outside the window) count nothing.
The sums run in sequence order (sorted by the keys' indices), so KV-cache ring buffers and
context parallelism's zigzag order give the same positions as the plain forward pass.

Only the reference attention path computes it (the cumulative sum needs each query's whole row
of gates); `auto` puts CoPE layers there at every length, and resolve refuses other paths. The
embeddings start at zero as in the paper, so a fresh CoPE layer attends as a NoPE one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from nopejax.model import ops
from nopejax.model.schemes import base


def contextual_positions(gates_BKGTS, k_idx_S, npos_max):
  """p_ij = sum of the gates of keys at or after j (in sequence order), capped at npos_max - 1."""
  order_S = jnp.argsort(k_idx_S)
  sorted_BKGTS = gates_BKGTS[..., order_S]
  after_BKGTS = jnp.flip(jnp.cumsum(jnp.flip(sorted_BKGTS, -1), axis=-1), -1)
  return jnp.minimum(after_BKGTS[..., jnp.argsort(order_S)], npos_max - 1)


def cope_logits(emb_HP, q_BTKGH, logits_BKGTS, allowed_BTS, keys):
  """q_i . e[p_ij], interpolated: [B, K, G, T, S] float32."""
  npos_max = emb_HP.shape[1]
  gates_BKGTS = jax.nn.sigmoid(logits_BKGTS) * allowed_BTS[:, None, None]
  pos_BKGTS = contextual_positions(gates_BKGTS, keys.k_idx_S, npos_max)
  int_BTKGP = jnp.einsum(
    "BTKGH,HP->BTKGP", q_BTKGH, emb_HP.astype(q_BTKGH.dtype), preferred_element_type=jnp.float32
  )
  int_BKGTP = jnp.moveaxis(int_BTKGP, 1, 3)
  floor_BKGTS = jnp.floor(pos_BKGTS)
  frac_BKGTS = pos_BKGTS - floor_BKGTS
  at = lambda p: jnp.take_along_axis(int_BKGTP, p.astype(jnp.int32), axis=-1)
  return at(jnp.ceil(pos_BKGTS)) * frac_BKGTS + at(floor_BKGTS) * (1.0 - frac_BKGTS)


class CoPE(base.Scheme):
  def bias_fn(self, module, spec, shared):
    del shared
    emb_HP = ops.param(
      module,
      "cope_pos_emb",
      nn.initializers.zeros,
      (spec.head_dim, spec.cope_npos_max),
      ("head_dim", "cope_positions"),
      spec.param_dtype,
    )
    return base.ContentBias(cope_logits, emb_HP)


COPE = CoPE("cope", has_bias=True, content=True)
