"""TPU programs compiled on this CPU host with libtpu (the `tpu` extra)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def aot(*args):
  return subprocess.run(
    [sys.executable, "-m", "nopejax.aot", *args],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_tiny_compiles_for_v5e_and_fits():
  proc = aot(
    "--config=configs/tiny.py",
    "--topology=v5e:2x2",
    "--config.model.num_kv_heads=2",
    "--config.mesh.data=2",
    "--config.mesh.tensor=2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["fits"] and report["hbm_bytes"] == 16 * 2**30
  assert report["argument_bytes"] > 0 and "v5e:2x2: 4 devices" in proc.stdout


def test_model_too_large_for_the_slice_exits_nonzero():
  proc = aot(
    "--config=configs/tiny.py",
    "--topology=v5e:2x2",
    "--config.model.d_model=8192",
    "--config.model.d_ff=32768",
    "--config.model.num_heads=64",
    "--config.model.num_kv_heads=8",
    "--config.model.num_layers=8",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=4",
    "--config.data.batch_size=4",
  )
  assert proc.returncode != 0
  assert "error: the train step needs more than the 16.00 GiB of HBM" in proc.stderr


def test_unknown_topology_lists_the_known_ones():
  proc = aot("--config=configs/tiny.py", "--topology=v9z:2x2")
  assert proc.returncode != 0
  assert "unknown topology 'v9z:2x2'; known: v4:2x2x1" in proc.stderr


def test_long_sequences_compile_with_context_parallelism_and_bias_layers_on_flash():
  """8k tokens over mesh.context=2: the sequence sharded, ALiBi and T5 layers on the JAX flash
  path (splash takes no bias), every layer's keys gathered over the context axis."""
  proc = aot(
    "--config=configs/long_context.py:seq_len=8192,batch_size=2,context=2,"
    "positions=nope+alibi+rope@sliding:1024+t5",
    "--topology=v5e:2x2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["fits"] and "v5e:2x2: 4 devices" in proc.stdout
