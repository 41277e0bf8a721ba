"""Meshes: every mesh gives the losses of one device, parameters are sharded by the rules,
a checkpoint restores onto another mesh, and bad meshes fail with named errors."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
from jax.experimental import mesh_utils

from nopejax import experiment
from nopejax.model import spec as config_lib
from nopejax.parallel import mesh as sharding
from nopejax.parallel import spec as mesh_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mesh_run(devices, workdir, data_dir, steps, *meshes):
  env = dict(
    os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
  )
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "tests", "mesh_script.py"),
      str(workdir),
      str(data_dir),
      str(steps),
      *meshes,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_meshes_match_one_device_and_shard_parameters(tmp_path):
  one = mesh_run(1, tmp_path / "one", tmp_path / "data", 6, "1,1,1")["1,1,1"]
  # "2x4,1,1": two slices (mesh.dcn_data=2) of data=4; "2,2x2,1": mesh.dcn_fsdp=2 of fsdp=2.
  meshes = ("8,1,1", "1,8,1", "1,4,2", "2,2,2", "2x4,1,1", "2,2x2,1")
  many = mesh_run(8, tmp_path / "eight", tmp_path / "data", 6, *meshes)
  for mesh, result in many.items():
    assert result["devices"] == 8
    for step, loss in one["losses"].items():
      assert result["losses"][step] == pytest.approx(loss, rel=1e-5), mesh
  # q is [layers, embed, heads, head_dim]: embed over fsdp, heads over tensor.
  assert many["8,1,1"]["q_shard_shape"] == [2, 32, 2, 16]  # replicated
  assert many["1,8,1"]["q_shard_shape"] == [2, 4, 2, 16]
  assert many["2,2,2"]["q"] == "P(None, 'fsdp', 'tensor', None)"
  assert many["2,2,2"]["q_shard_shape"] == [2, 16, 1, 16]
  assert many["1,4,2"]["gate"] == "P(None, 'fsdp', 'tensor')"
  # Two slices of four host devices (contiguous runs stand in for slices): each slice is one
  # block along the axis its DCN factor multiplies.
  assert np.array(many["2x4,1,1"]["device_ids"])[:4].flatten().tolist() == [0, 1, 2, 3]
  ids = np.array(many["2,2x2,1"]["device_ids"])  # [data=2, dcn_fsdp*fsdp=4, 1, 1]
  assert sorted(ids[:, :2].flat) == [0, 1, 2, 3] and sorted(ids[:, 2:].flat) == [4, 5, 6, 7]
  assert many["2,2x2,1"]["q_shard_shape"] == [2, 8, 2, 16]  # embed over both slices' fsdp


# Every scheme and window, packed rows (tiny's task documents), block pairs skipped by the
# flash path; 4 periods of 4 layers would only repeat the same program, so one period.
CONTEXT_MODEL = (
  # CoPE sums its gates in sequence order, which zigzag permutes; FIRE's MLP is a bias param.
  "model.positions=nope+rope@sliding:8+alibi@chunked:16+t5+fire+cope",
  "model.query_scaling=ssmax+none",
  "model.num_layers=6",
  "model.attention_impl=auto",
  "model.flash_above=1",  # flash for every layer but CoPE's, which takes the reference path
  "model.block_size=4",
  "model.loss_chunk=12",  # the chunked loss (32-token rows: two chunks and a padded one)
)


def test_context_parallelism_matches_one_device(tmp_path):
  """Sequence sharded over mesh.context (zigzag order), with data, fsdp and tensor beside it."""
  one = mesh_run(1, tmp_path / "one", tmp_path / "data", 4, "1,1,1,1", *CONTEXT_MODEL)
  many = mesh_run(
    8, tmp_path / "eight", tmp_path / "data", 4, "4,1,2,1", "1,2,4,1", "2,1,2,2", *CONTEXT_MODEL
  )
  for mesh, result in many.items():
    for step, loss in one["1,1,1,1"]["losses"].items():
      assert result["losses"][step] == pytest.approx(loss, rel=1e-5), mesh


def test_context_axis_needs_a_sequence_it_can_balance():
  cfg = _cfg(data=1, fsdp=1, context=4, tensor=1)
  spec = config_lib.resolve(cfg.model)
  # 4 devices x 2 chunks do not divide 36 tokens.
  with pytest.raises(ValueError, match=r"data\.seq_len=36 .* 2 \* mesh\.context=8"):
    sharding.check_divisible(spec, mesh_spec.resolve(cfg.mesh), 8, 4, 36)


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  data = tmp_path / "data"
  reference = mesh_run(8, tmp_path / "a", data, 10, "8,1,1")["8,1,1"]["losses"]
  # Keep only step 5 of the data=8 run, then resume it as data=2, fsdp=2, tensor=2.
  resumed = tmp_path / "b" / "2_2_2"
  shutil.copytree(tmp_path / "a" / "8_1_1", resumed)
  shutil.rmtree(resumed / "checkpoints" / "10")
  shutil.rmtree(resumed / "params")
  (resumed / "metrics.jsonl").write_text("")
  losses = mesh_run(8, tmp_path / "b", data, 10, "2,2,2")["2,2,2"]["losses"]
  assert sorted(int(s) for s in losses) == list(range(6, 11))
  for step in range(6, 11):
    assert losses[str(step)] == pytest.approx(reference[str(step)], rel=1e-5)


def _cfg(**mesh):
  cfg = experiment.base_config()
  cfg.mesh.update(mesh)
  return cfg


def test_mesh_that_does_not_multiply_to_the_devices():
  with pytest.raises(
    ValueError, match=r"mesh: data\*fsdp\*context\*tensor = 2\*2\*1\*1 = 4 but there are 8"
  ):
    sharding.mesh_shape(mesh_spec.resolve(_cfg(data=2, fsdp=2, tensor=1).mesh), 8)
  assert sharding.mesh_shape(mesh_spec.resolve(_cfg(data=-1, fsdp=2, tensor=2).mesh), 8) == {
    "data": 2,
    "fsdp": 2,
    "context": 1,
    "tensor": 2,
  }


def test_tensor_axis_must_divide_heads():
  cfg = _cfg(data=1, fsdp=1, tensor=4)
  cfg.model.num_heads, cfg.model.num_kv_heads = 4, 2
  spec = config_lib.resolve(cfg.model)
  with pytest.raises(ValueError, match=r"mesh\.tensor=4 does not divide model\.num_kv_heads=2"):
    sharding.check_divisible(spec, mesh_spec.resolve(cfg.mesh), 8, 4)


@dataclasses.dataclass(frozen=True)
class _Device:
  """What a mesh reads of a device."""

  id: int
  slice_index: int = 0
  process_index: int = 0
  platform: str = "cpu"
  device_kind: str = "cpu"


def _ids(devices):
  return np.vectorize(lambda d: d.id)(devices)


@pytest.mark.parametrize(
  "mesh,shape",
  [
    (dict(dcn_data=2, data=-1, tensor=2), (4, 1, 1, 2)),
    (dict(dcn_fsdp=2, data=1, fsdp=-1), (1, 8, 1, 1)),
    (dict(dcn_data=2, dcn_fsdp=2, data=1, fsdp=2), (2, 4, 1, 1)),
  ],
)
def test_runs_of_host_devices_are_placed_as_jax_places_slices(mesh, shape):
  spec = mesh_spec.resolve(_cfg(**mesh).mesh)
  devices = [_Device(i, slice_index=i // (8 // spec.num_slices)) for i in range(8)]
  ici = list(sharding.slice_shape(spec, 8).values())
  hybrid = mesh_utils.create_hybrid_device_mesh(ici, spec.dcn_sizes(), devices)
  assert list(sharding.mesh_shape(spec, 8).values()) == list(shape)
  assert (_ids(sharding.device_array(spec, devices)) == _ids(hybrid)).all()


def test_one_process_per_slice_when_the_devices_name_no_slice():
  spec = mesh_spec.resolve(_cfg(dcn_data=2, data=4).mesh)
  devices = [_Device(i, process_index=i % 2, platform="gpu", device_kind="gpu") for i in range(8)]
  placed = sharding.device_array(spec, devices)
  assert [d.process_index for d in placed.flat] == [0] * 4 + [1] * 4


@pytest.mark.parametrize(
  "mesh,devices,message",
  [
    (dict(dcn_data=0), 8, r"mesh\.dcn_data: expected a positive integer, got 0"),
    (dict(dcn_data=4), 6, r"mesh: 6 devices do not split into .* = 4\*1 = 4 slices"),
    (dict(dcn_fsdp=2, data=2, fsdp=4), 8, r"= 2\*4\*1\*1 = 8 but there are 4 devices per slice"),
  ],
)
def test_bad_multislice_meshes(mesh, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(mesh_spec.resolve(_cfg(**mesh).mesh), devices)


def test_slices_the_tpu_devices_name_must_be_the_dcn_slices():
  two = [_Device(i, slice_index=i // 4, platform="tpu") for i in range(8)]
  with pytest.raises(ValueError, match=r"dcn_fsdp = 1\*1 but the devices are on 2 slices"):
    sharding.device_array(mesh_spec.resolve(_cfg().mesh), two)
  one = [_Device(i, platform="tpu") for i in range(8)]
  with pytest.raises(ValueError, match=r"dcn_fsdp = 2\*1 but the devices are on 1 slice$"):
    sharding.device_array(mesh_spec.resolve(_cfg(dcn_data=2).mesh), one)


def test_batch_must_divide_over_every_slice():
  cfg = _cfg(dcn_data=2, data=2)
  with pytest.raises(
    ValueError, match=r"batch_size=6 .* mesh\.dcn_data\*mesh\.data\*mesh\.dcn_fsdp\*mesh\.fsdp=4"
  ):
    sharding.check_divisible(config_lib.resolve(cfg.model), mesh_spec.resolve(cfg.mesh), 6, 4)
