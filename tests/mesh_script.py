"""Run by tests/test_mesh.py in a subprocess with 8 (or 1) host devices.

  python tests/mesh_script.py WORKDIR DATA_DIR STEPS MESH [MESH ...] [key=value ...]

MESH is DATA,FSDP,TENSOR or DATA,FSDP,CONTEXT,TENSOR, where DATA or FSDP may be SLICESxSIZE
(`2x4,1,1`: mesh.dcn_data=2, mesh.data=4); key=value overrides the config (e.g.
model.positions=alibi). Trains configs/tiny.py in WORKDIR/<mesh> for each mesh and prints one
JSON line: for each mesh, its losses, device ids and the sharding spec of a few parameters.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import logging  # noqa: E402

from configs import tiny  # noqa: E402
from nopejax import experiment  # noqa: E402
from nopejax.train import loop  # noqa: E402


def _axis(field):
  """'4' -> (1, 4); '2x4' -> (2, 4): two slices of 4."""
  slices, _, size = field.rpartition("x")
  return int(slices or 1), int(size)


def main(workdir, data_dir, steps, *args):
  logging.set_verbosity(logging.ERROR)
  meshes = [a for a in args if "=" not in a]
  overrides = dict(a.split("=", 1) for a in args if "=" in a)
  out = {}
  for mesh in meshes:
    cfg = tiny.get_config()
    cfg.model.num_kv_heads = 2  # so tensor=2 divides the kv heads
    cfg.data.data_dir = data_dir
    cfg.train.steps = int(steps)
    cfg.train.log_every = 1
    cfg.train.eval_every = 0
    cfg.train.checkpoint_every = 5
    fields = mesh.split(",")
    if len(fields) == 3:
      fields.insert(2, "1")
    (cfg.mesh.dcn_data, cfg.mesh.data), (cfg.mesh.dcn_fsdp, cfg.mesh.fsdp) = map(_axis, fields[:2])
    cfg.mesh.context, cfg.mesh.tensor = map(int, fields[2:])
    for key, value in overrides.items():
      group, name = key.split(".")
      kind = type(cfg[group][name])
      cfg[group][name] = value.replace("+", ",") if kind is str else kind(value)
    run_dir = os.path.join(workdir, mesh.replace(",", "_"))
    params = loop.run(experiment.resolve(cfg), run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    attn = params["layers"]["block_0"]["attn"]
    out[mesh] = {
      "losses": {r["step"]: r["loss"] for r in rows if "loss" in r},
      "devices": jax.device_count(),
      "device_ids": attn["q"].sharding.mesh.device_ids.tolist(),
      "q": str(attn["q"].sharding.spec),
      "gate": str(params["layers"]["block_0"]["mlp"]["gate"].sharding.spec),
      "q_shard_shape": list(attn["q"].addressable_shards[0].data.shape),
    }
  print(json.dumps(out))


if __name__ == "__main__":
  main(*sys.argv[1:])
