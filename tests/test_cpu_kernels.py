"""The CPU decode-attention kernel (model/cpu_kernels.py): its output against a float64 numpy
softmax attention, the path choice, and decoding without a compiler."""

import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nopejax.model import attention, cpu_kernels

jax.config.update("jax_numpy_rank_promotion", "raise")


def numpy_attention(q_BKGH, k_BKSH, v_BKSH, k_new_BKH, v_new_BKH, bias_BKGS):
  k = np.concatenate([k_BKSH, k_new_BKH[:, :, None]], axis=2).astype(np.float64)
  v = np.concatenate([v_BKSH, v_new_BKH[:, :, None]], axis=2).astype(np.float64)
  logits = np.einsum("bkgh,bksh->bkgs", q_BKGH.astype(np.float64), k) + bias_BKGS
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum("bkgs,bksh->bkgh", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("stacked", [False, True], ids=["one-layer", "stack"])
def test_decode_attention_matches_numpy(stacked):
  """Head dim 12 exercises the dot's tail; masked slots (NEG_INF) and one row that sees only its
  own new token; with `stacked`, layer 2 of a stack of 3 is read in place."""
  assert cpu_kernels.available()  # the test machine has a C++ compiler
  B, K, G, S, H, R = 3, 2, 3, 7, 12, 3
  rng = np.random.default_rng(0)
  f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  q, k_new, v_new = f(B, K, G, H), f(B, K, H), f(B, K, H)
  k_stack, v_stack = f(R, B, K, S, H), f(R, B, K, S, H)
  bias = f(B, K, G, S + 1)
  bias[:, :, :, 5:7] = attention.NEG_INF  # empty slots
  bias[1, :, :, :S] = attention.NEG_INF  # a row whose cache is all masked
  layer = 2 if stacked else 0
  k_cache, v_cache = (k_stack, v_stack) if stacked else (k_stack[0], v_stack[0])
  got = jax.jit(cpu_kernels.decode_attention)(q, k_cache, v_cache, layer, k_new, v_new, bias)
  want = numpy_attention(q, k_stack[layer], v_stack[layer], k_new, v_new, bias)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(np.asarray(got)[1], v_new[1, :, None].repeat(G, 1), atol=1e-6)


def test_choose_takes_the_kernel_for_fp32_cpu_decoding_steps():
  common = dict(has_bias=True, flash_above=64, key_length=9)
  assert attention.choose("auto", length=1, backend="cpu", dtype=jnp.float32, **common) == (
    "decode_kernel"
  )
  assert attention.choose("auto", length=1, backend="cpu", dtype=jnp.bfloat16, **common) == (
    "reference"
  )
  assert attention.choose("auto", length=2, backend="cpu", dtype=jnp.float32, **common) == (
    "reference"
  )
  assert attention.choose("auto", length=1, backend="tpu", dtype=jnp.float32, **common) == "flash"
  assert attention.choose("reference", length=1, backend="cpu", dtype=jnp.float32, **common) == (
    "reference"
  )
  content = dict(common, content=True)
  assert attention.choose("auto", length=1, backend="cpu", dtype=jnp.float32, **content) == (
    "reference"
  )


GENERATE = """
import json, jax, nopejax
from nopejax.model import cpu_kernels, generate, spec
cfg = spec.model_config()
cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.d_ff = 64, 32, 4, 64
cfg.num_heads, cfg.num_kv_heads, cfg.positions = 4, 2, "rope,alibi,nope@sliding:3,t5"
params = nopejax.init(cfg, jax.random.key(3))
out = generate.generate(cfg, params, [[1, 5, 9], [7, 3, 2, 8, 4]], 6)
print(json.dumps({"kernel": cpu_kernels.available(), "tokens": out.tolist()}))
"""


def _generate(**env):
  """{kernel: whether the kernel decoded, tokens} of a tiny mixed-scheme model, in a new process."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [sys.executable, "-c", GENERATE],
    env=dict(os.environ, **env),
    cwd=root,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_without_a_compiler_decoding_keeps_the_reference_path(tmp_path):
  """A machine with no C++ compiler decodes the same tokens through the reference path, with a
  one-line warning and no traceback, and builds nothing."""
  without, stderr = _generate(CXX=str(tmp_path / "no-such-c++"), XDG_CACHE_HOME=str(tmp_path))
  assert without["kernel"] is False
  assert "decode kernel: building" in stderr and "Traceback" not in stderr
  assert not list(tmp_path.glob("nopejax/kernels/*.so"))
  with_kernel, _ = _generate()
  assert with_kernel == {"kernel": True, "tokens": without["tokens"]}
