"""python -m nopejax.aot --config=configs/X.py --topology=v5p:2x2x1

Compiles the real sharded train step for a TPU topology on any host (libtpu from the `tpu`
extra; no TPU needed) and reports per-device memory against the chip's HBM. Exits non-zero
when the step does not fit.
"""

import functools
import json
import os
import sys

# Compiling for a TPU topology on a CPU host touches no TPU, so several such processes (tests in
# parallel, a sweep of aot checks) may load libtpu at once; its lockfile would refuse them.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

from nopejax import experiment, optimizer, sharding, training

# HBM per chip, GiB (public specs).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
TOPOLOGIES = ("v4:2x2x1", "v4:2x2x2", "v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5p:2x2x1",
              "v5p:2x2x2", "v5p:2x4x4", "v5p:4x4x4", "v6e:1x1", "v6e:2x2", "v6e:2x4", "v6e:4x4")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", f"TPU topology, one of {', '.join(TOPOLOGIES)}.")


def topology_devices(name):
  if name not in TOPOLOGIES:
    raise ValueError(f"--topology: unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}")
  from jax.experimental import topologies
  chips = name.split(":")[1].split("x")
  return topologies.get_topology_desc(
      platform="tpu", topology_name=name,
      chip_config_name="megacore" if name.startswith(("v4", "v5p")) else "default",
      chips_per_host_bounds=[min(int(c), 2) for c in chips] + [1] * (3 - len(chips)),
      num_slices=1).devices


def compile_train_step(cfg, devices):
  """Lowers and compiles the sharded train step for `devices`; returns the compiled program."""
  spec = experiment.validate(cfg)
  sharding.check_divisible(spec, cfg.mesh, cfg.data.batch_size, len(devices))
  mesh = sharding.make_mesh(cfg.mesh, devices)
  tx, lr_fn = optimizer.make(cfg.opt, cfg.train.steps)
  abstract, shardings = training.state_shardings(spec, tx, mesh, cfg.mesh, cfg.train.seed)
  batch_sharding = sharding.batch_sharding(mesh, cfg.mesh)
  shape = (cfg.data.batch_size, cfg.data.seq_len)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding)
           for k in ("inputs", "targets", "segment_ids", "positions")}
  batch["loss_mask"] = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sharding)
  step = jax.jit(
      functools.partial(training.train_step, spec=spec, tx=tx, lr_fn=lr_fn,
                        z_loss=cfg.opt.z_loss, microbatches=cfg.opt.microbatches),
      in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
      donate_argnums=0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(cfg.mesh)):
    return step.lower(abstract, batch).compile()


def memory_report(compiled, topology):
  m = compiled.memory_analysis()
  hbm = HBM_GIB[topology.split(":")[0]] * 2 ** 30
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"topology": topology, "argument_bytes": m.argument_size_in_bytes,
          "output_bytes": m.output_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
          "alias_bytes": m.alias_size_in_bytes, "total_bytes": total, "hbm_bytes": hbm,
          "fits": total <= hbm}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  try:
    devices = topology_devices(_TOPOLOGY.value)
    report = memory_report(compile_train_step(_CONFIG.value, devices), _TOPOLOGY.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # The TPU compiler itself refuses programs that cannot fit in HBM.
    sys.exit(f"error: the train step needs more than the "
             f"{HBM_GIB[_TOPOLOGY.value.split(':')[0]]:.2f} GiB of HBM of a "
             f"{_TOPOLOGY.value.split(':')[0]} chip: {str(e).splitlines()[0]}; shard more "
             "(mesh.fsdp), remat (model.remat) or shrink data.batch_size")
  gib = lambda b: f"{b / 2 ** 30:.2f} GiB"
  print(f"{_TOPOLOGY.value}: {len(devices)} devices; per device: arguments "
        f"{gib(report['argument_bytes'])}, temporaries {gib(report['temp_bytes'])}, outputs "
        f"{gib(report['output_bytes'])} (aliased {gib(report['alias_bytes'])}); total "
        f"{gib(report['total_bytes'])} of {gib(report['hbm_bytes'])} HBM")
  print(json.dumps(report))
  if not report["fits"]:
    sys.exit(f"error: the train step needs {gib(report['total_bytes'])} per device but a "
             f"{_TOPOLOGY.value.split(':')[0]} chip has {gib(report['hbm_bytes'])} of HBM; "
             "shard more (mesh.fsdp), remat (model.remat) or shrink data.batch_size")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
