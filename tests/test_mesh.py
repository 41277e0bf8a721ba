"""Meshes: every mesh gives the losses of one device, parameters are sharded by the rules,
a checkpoint restores onto another mesh, and bad meshes fail with named errors."""

import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

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
  many = mesh_run(8, tmp_path / "eight", tmp_path / "data", 6, "8,1,1", "1,8,1", "1,4,2", "2,2,2")
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
