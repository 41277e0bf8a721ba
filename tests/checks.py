"""Checks the tests share: causality by input gradients, random params, and a job of two
processes against one process on the same global batch."""

import json
import os

import jax
import numpy as np
import pytest

import nopejax
from nopejax import experiment
from nopejax.data import pipeline
from nopejax.train import loop

REAL_TRAIN_ITER = pipeline.train_iter


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


class TwoShards:
  """One process reading both processes' shards: the global batch two processes would see."""

  def __init__(self, data_cfg, **_):
    self.shards = [REAL_TRAIN_ITER(data_cfg, process_index=i, process_count=2) for i in range(2)]

  def __next__(self):
    parts = [next(s) for s in self.shards]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self):
    return [s.get_state() for s in self.shards]

  def set_state(self, state):
    for s, st in zip(self.shards, state):
      s.set_state(st)


def assert_two_processes_match_one(two_dir, cfg, one_dir, monkeypatch):
  """Trains `cfg` in this process on both shards (TwoShards) into `one_dir`; then every row
  of two_dir/metrics.jsonl (a two-process run of `cfg`) has the same step, loss and val_loss."""
  monkeypatch.setattr(pipeline, "train_iter", TwoShards)
  loop.run(experiment.resolve(cfg), os.fspath(one_dir))
  read = lambda d: [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
  two, one = read(two_dir), read(one_dir)
  assert [r["step"] for r in two] == [r["step"] for r in one]
  for a, b in zip(two, one):
    for key in ("loss", "val_loss"):
      if key in b:
        assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)
