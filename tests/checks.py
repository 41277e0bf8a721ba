"""Checks the model tests share: causality by input gradients and random params."""

import jax
import numpy as np

import nopejax


def input_jacobian_norms(cfg, params, tokens_1T, jit=jax.jit):
  """|d logits[t] / d input embedding[s]| as a [T, S] matrix.

  Each position gets its own token id and the output head is untied, so the gradient with
  respect to the embedding row of tokens[s] is exactly the gradient with respect to the input
  vector at position s.
  """
  probe_V = jax.random.normal(jax.random.key(1), (cfg.vocab_size,))

  def out_T(embedding_VD):
    logits_BTV = nopejax.forward(cfg, dict(params, embedding=embedding_VD), tokens_1T)
    return logits_BTV[0] @ probe_V

  jac_TVD = jit(jax.jacrev(out_T))(params["embedding"])
  return np.abs(np.asarray(jac_TVD)[:, np.asarray(tokens_1T[0])]).sum(-1)


def random_params(model_cfg, seed=0, spread=0.2):
  """Params in nopejax.init's layout at O(1) scale, drawn in numpy from eval_shape (an eager
  flax init costs seconds per config): unit-norm scales and zero biases would hide mapping
  errors."""
  abstract = jax.eval_shape(lambda: nopejax.init(model_cfg, jax.random.key(0)))
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape).astype(leaf.dtype)
    if "scale" in name:
      return 1.0 + 0.2 * noise
    return noise * (1.0 if name == "['embedding']" else spread)

  return jax.tree_util.tree_map_with_path(draw, abstract)
