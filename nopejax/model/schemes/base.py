"""The interface of a positional scheme: what one layer token (`model.positions`) does.

A scheme is a frozen, hashable value picked per layer before tracing. It can rotate queries and
keys (`queries_keys`, RoPE-like schemes) and add a bias to the logits (`bias_fn`, ALiBi-like
schemes); the base class does neither, so a layer of a scheme that overrides nothing compiles to
no positional ops at all. Attention calls only these two hooks: adding a scheme is a module here
and an entry in `SCHEMES` (schemes/__init__.py), with no edit to the attention code.

Letter legend (used in every module): B batch, T query length, S key length, D model width,
N query heads, K key/value heads, G query heads per kv head, H head dim, F MLP width, V vocab,
R rotary frequencies, U bias buckets.
"""

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Bias:
  """A bias on the logits with its parameters explicit: `fn(params, q_pos_BT, k_pos_BS) ->
  [B, N, T, S]` float32. Called as `bias(q_pos_BT, k_pos_BS)`; the flash path and context
  parallelism take `params` apart to differentiate them and to pass them into shard_map."""

  fn: Callable
  params: Any = ()

  def __call__(self, q_pos_BT, k_pos_BS):
    return self.fn(self.params, q_pos_BT, k_pos_BS)


@dataclasses.dataclass(frozen=True)
class ContentBias(Bias):
  """A bias that depends on the queries and keys, not only on positions (CoPE):
  `fn(params, q_BTKGH, logits_BKGTS, allowed_BTS, keys) -> [B, K, G, T, S]` float32, from the
  scaled queries, the fp32 logits q.k and the mask. Only the reference path computes it: it needs
  each query's whole row of logits."""


@dataclasses.dataclass(frozen=True)
class Scheme:
  name: str
  rotary: bool = False  # rotates `spec.rope_dim` dims (model.rope_fraction is validated for it)
  has_bias: bool = False  # returns a bias_fn: paths that take no bias are not chosen for it
  content: bool = False  # its bias_fn is a ContentBias: the layer takes the reference path

  def queries_keys(self, module, spec, q_BTNH, k_BSKH, keys):
    """Queries and keys after the scheme (before the softmax scale); `module` owns any params."""
    del module, spec, keys
    return q_BTNH, k_BSKH

  def bias_fn(self, module, spec, shared):
    """None, or a `Bias`: `bias(q_pos_BT, k_pos_BS) -> [B, N, T, S]` float32 added to the
    logits, its learned parameters (if any) in `Bias.params`. `shared`: the parameters the
    decoder holds for all layers (a shared T5 table), by name."""
    del module, spec, shared
    return None
