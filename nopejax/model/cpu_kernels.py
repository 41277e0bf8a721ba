"""A CPU kernel for one decoding step's attention, through XLA's FFI (decode_attention.cc).

On a CPU a decoding step's attention is two batched dots per layer, [S, H] x [H, G] for every
(batch row, kv head), and XLA's Eigen dots spend most of their time per batch element: at the
bench_cpu decode shape they took a third of the step (README Performance). The kernel reads each
row's cached keys and values once for all G query heads of its group, in place in the stacked
cache, and shares the rows with XLA's intra-op threads. Masks and positional biases stay in XLA:
the kernel takes them as one additive [B, K, G, S + 1] array, so every scheme without a
content-dependent bias (CoPE) decodes through it.

The source is compiled on first use with the machine's C++ compiler (`$CXX`, else c++ or g++),
for its CPU (`-march=native`), into the local cache, keyed by the source, the flags, jaxlib and
the CPU; without a compiler, or with NOPEJAX_CPU_KERNELS=0, decoding keeps the reference path.
"""

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
from absl import logging

from nopejax import storage

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode_attention.cc")
TARGET = "nopejax_decode_attention"
# -ffast-math for the softmax's exp: GCC then calls glibc's vector expf (libmvec). Masks are
# finite (attention.NEG_INF), so finite-math is exact here.
FLAGS = ("-O3", "-march=native", "-ffast-math", "-std=c++17", "-shared", "-fPIC")


def _cpu_id():
  """What -march=native compiles for: the CPU's model name and feature flags."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() or platform.machine()


def _compiler():
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _build(compiler):
  """Path of the compiled library, built now unless the cache holds it."""
  with open(SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(
    b"\0".join([source, " ".join(FLAGS).encode(), jaxlib.__version__.encode(), _cpu_id().encode()])
  ).hexdigest()[:16]
  directory = os.fspath(storage.cache_home() / "kernels")
  library = os.path.join(directory, f"decode_attention-{key}.so")
  if os.path.exists(library):
    return library
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".so.tmp")
  os.close(fd)
  try:
    subprocess.run(
      [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", SOURCE, "-o", tmp],
      check=True,
      capture_output=True,
      text=True,
    )
    os.replace(tmp, library)  # concurrent builders each write whole files; the last one wins
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return library


@functools.cache
def available():
  """Whether the decode kernel is registered with XLA (building it on the first call)."""
  if os.environ.get("NOPEJAX_CPU_KERNELS", "1") == "0":
    return False
  compiler = _compiler()
  if compiler is None:
    logging.warning(
      "decode kernel: no C++ compiler ($CXX, c++, g++); decoding on the CPU "
      "keeps the reference attention path"
    )
    return False
  try:
    import ctypes

    library = ctypes.cdll.LoadLibrary(_build(compiler))
  except (OSError, subprocess.CalledProcessError) as e:
    detail = getattr(e, "stderr", "") or str(e)
    logging.warning(
      "decode kernel: building %s failed, decoding keeps the reference attention path: %s",
      SOURCE,
      detail.strip().splitlines()[-1:],
    )
    return False
  jax.ffi.register_ffi_target(
    TARGET, jax.ffi.pycapsule(library.NopejaxDecodeAttention), platform="cpu"
  )
  return True


def decode_attention(q_BKGH, k_cache, v_cache, layer, k_new_BKH, v_new_BKH, bias_BKGS):
  """Attention of one decoding step: [B, K, G, H].

  q_BKGH: the step's queries (already scaled) by kv head and group. k_cache, v_cache: a layer's
  cache [B, K, S, H], or a stack of them [R, B, K, S, H] of which `layer` (int32 scalar) is read.
  k_new_BKH, v_new_BKH: the step's own key and value. bias_BKGS: additive, [B, K, G, S + 1] (the
  last column is the step's own token)."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  B, K, G, H = q_BKGH.shape
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((B, K, G, H), jnp.float32))
  return call(
    f32(q_BKGH),
    k_cache,
    v_cache,
    jnp.asarray(layer, jnp.int32),
    f32(k_new_BKH),
    f32(v_new_BKH),
    f32(bias_BKGS),
  )
