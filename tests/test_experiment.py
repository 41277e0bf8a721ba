"""The one validation pass (config -> frozen specs) and the registries behind the extensions."""

import dataclasses
import functools
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import nopejax
from nopejax import experiment
from nopejax.data import sources
from nopejax.eval import kinds
from nopejax.model import schemes
from nopejax.model.schemes import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import lengthgen, text, tiny  # noqa: E402


@pytest.mark.parametrize("get_config", [tiny.get_config, text.get_config, lengthgen.get_config])
def test_resolve_gives_frozen_hashable_specs_with_the_config_names(get_config):
  cfg = get_config()
  exp = experiment.resolve(cfg)
  hash(exp)  # every spec is hashable: the model spec is a static jit argument
  with pytest.raises(dataclasses.FrozenInstanceError):
    exp.data.seq_len = 1
  for group in ("data", "opt", "train", "eval"):
    spec = getattr(exp, group)
    for field in dataclasses.fields(spec):
      value = cfg[group][field.name]
      assert getattr(spec, field.name) == (tuple(value) if isinstance(value, list) else value)
  assert json.loads(exp.config_json) == json.loads(cfg.to_json())
  assert experiment.resolve(exp) is exp


def test_a_config_json_written_before_a_key_existed_takes_its_default():
  saved = json.loads(tiny.get_config().to_json())
  del saved["model"]["scan_unroll"], saved["data"]["num_workers"], saved["eval"]["lm_lengths"]
  exp = experiment.resolve(ml_collections.ConfigDict(saved))
  assert (exp.model.scan_unroll, exp.data.num_workers, exp.eval.lm_lengths) == (1, 0, None)


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.positions", "rope,nope,rope", "model.positions: a period of 3 layers does not divide"),
    ("mesh.fsdp", 0, "mesh.fsdp: expected a positive size or -1"),
    ("eval.kinds", "lm", "eval.kinds: lm read text"),
    ("eval.rope_scaling_factor", 0.5, "eval.rope_scaling_factor: expected a number >= 1"),
    ("data.tokenizer", "bpe", "data.tokenizer: unknown tokenizer 'bpe'"),
  ],
)
def test_every_group_is_checked_in_the_one_pass(key, value, message):
  cfg = tiny.get_config()
  group, field = key.split(".")
  cfg[group][field] = value
  with pytest.raises(ValueError, match=message):
    experiment.resolve(cfg)


class _SelfOnly(base.Scheme):
  """A bias that hides every other key: each token attends to itself alone."""

  def bias_fn(self, module, spec, shared):
    del module, shared

    def bias(q_pos_BT, k_pos_BS):
      same_BTS = q_pos_BT[:, :, None] == k_pos_BS[:, None, :]
      bias_BTS = jnp.where(same_BTS, 0.0, -1e9)
      return jnp.broadcast_to(
        bias_BTS[:, None], (bias_BTS.shape[0], spec.num_heads, *bias_BTS.shape[1:])
      )

    return bias


def test_a_new_scheme_is_one_module_and_one_registry_entry(monkeypatch):
  monkeypatch.setitem(schemes.SCHEMES, "self_only", _SelfOnly("self_only", has_bias=True))
  cfg = tiny.get_config()
  cfg.model.positions = "self_only"
  spec = experiment.resolve(cfg).model
  params = nopejax.init(spec, jax.random.key(0))
  tokens_BT = jax.random.randint(jax.random.key(1), (2, 9), 3, spec.vocab_size)
  forward = functools.partial(nopejax.forward, spec, params)
  logits_BTV = forward(tokens_BT)
  # With attention on itself alone, each position's logits are those of the token by itself.
  alone_BTV = jnp.concatenate([forward(tokens_BT[:, t : t + 1]) for t in range(9)], axis=1)
  np.testing.assert_allclose(logits_BTV, alone_BTV, atol=1e-5)
  cfg.model.positions = "nope"
  assert not np.allclose(nopejax.forward(cfg.model, params, tokens_BT), logits_BTV, atol=1e-3)


def test_registries_are_what_validation_accepts():
  cfg = tiny.get_config()
  cfg.model.positions = "fope"
  with pytest.raises(ValueError, match=f"known: {', '.join(schemes.SCHEMES)}"):
    experiment.resolve(cfg)
  cfg = tiny.get_config()
  cfg.eval.kinds = "perplexity"
  with pytest.raises(ValueError, match=f"known: {', '.join(kinds.KINDS)}"):
    experiment.resolve(cfg)
  cfg = tiny.get_config()
  cfg.data.kind = "parquet"
  with pytest.raises(ValueError, match=f"known: {', '.join(sources.SOURCES)}"):
    experiment.resolve(cfg)
