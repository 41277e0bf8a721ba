"""TPU programs compiled on this CPU host with libtpu (the `tpu` extra)."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(*args):
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=600,
  )


def aot(*args):
  return python("-m", "nopejax.aot", *args)


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
  assert (report["devices"], report["slices"]) == (4, 1)


def test_tiny_compiles_for_two_slices():
  proc = aot(
    "--config=configs/tiny.py",
    "--topology=v5e:2x2",
    "--num_slices=2",
    "--config.model.num_kv_heads=2",
    "--config.mesh.dcn_data=2",
    "--config.mesh.tensor=2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["fits"] and (report["devices"], report["slices"]) == (8, 2)
  assert "v5e:2x2 x 2 slices: 8 devices" in proc.stdout


def test_two_slices_need_the_dcn_axes_to_cover_them():
  proc = aot("--config=configs/tiny.py", "--topology=v5e:2x2", "--num_slices=2")
  assert proc.returncode != 0
  assert "mesh.dcn_data*mesh.dcn_fsdp = 1*1 but the devices are on 2 slices" in proc.stderr


# Prints, for each mesh group given as JSON, the slice_index of every device of its mesh over two
# v5e:2x2 slices.
SLICE_LAYOUT = """
import json, sys
import numpy as np
from nopejax.tools import aot  # first: it allows several libtpu loads
from nopejax.parallel import mesh as mesh_lib
from nopejax.parallel import spec as mesh_spec

devices = aot.topology_devices("v5e:2x2", num_slices=2)
for mesh in sys.argv[1:]:
  group = mesh_spec.mesh_config()
  group.update(json.loads(mesh))
  placed = mesh_lib.make_mesh(mesh_spec.resolve(group), devices).devices
  print(json.dumps(np.vectorize(lambda d: d.slice_index)(placed).tolist()))
"""


def test_the_dcn_axes_separate_the_slices_of_a_two_slice_topology():
  proc = python(
    "-c",
    SLICE_LAYOUT,
    '{"dcn_data": 2, "data": 2, "tensor": 2}',
    '{"dcn_fsdp": 2, "data": 1, "fsdp": 2, "tensor": 2}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  by_data, by_fsdp = (np.array(json.loads(line)) for line in proc.stdout.strip().splitlines())
  assert by_data.shape == (4, 1, 1, 2) and by_fsdp.shape == (1, 4, 1, 2)
  assert (by_data[:2] == 0).all() and (by_data[2:] == 1).all()
  assert (by_fsdp[:, :2] == 0).all() and (by_fsdp[:, 2:] == 1).all()


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
