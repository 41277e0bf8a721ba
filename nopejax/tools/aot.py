"""Ahead-of-time TPU compilation behind `python -m nopejax.aot`.

Compiles the real sharded train step for a TPU topology on any host (libtpu from the `tpu`
extra; no TPU needed) and reports per-device memory against the chip's HBM. Exits non-zero
when the step does not fit.
"""

import os

# Compiling for a TPU topology on a CPU host touches no TPU, so several such processes (tests in
# parallel, a sweep of aot checks) may load libtpu at once; its lockfile would refuse them.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax

from nopejax.train import build as build_lib

# HBM per chip, GiB (public specs).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
TOPOLOGIES = (
  "v4:2x2x1",
  "v4:2x2x2",
  "v5e:1x1",
  "v5e:2x2",
  "v5e:2x4",
  "v5e:4x4",
  "v5p:2x2x1",
  "v5p:2x2x2",
  "v5p:2x4x4",
  "v5p:4x4x4",
  "v6e:1x1",
  "v6e:2x2",
  "v6e:2x4",
  "v6e:4x4",
)


def topology_devices(name, num_slices=1):
  """The devices of `num_slices` slices of topology `name`, each device naming its slice in
  `slice_index` (as MaxText's compile_topology_num_slices)."""
  if name not in TOPOLOGIES:
    raise ValueError(f"--topology: unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}")
  from jax.experimental import topologies

  chips = name.split(":")[1].split("x")
  return topologies.get_topology_desc(
    platform="tpu",
    topology_name=name,
    chip_config_name="megacore" if name.startswith(("v4", "v5p")) else "default",
    chips_per_host_bounds=[min(int(c), 2) for c in chips] + [1] * (3 - len(chips)),
    num_slices=num_slices,
  ).devices


def compile_train_step(exp, devices):
  """Lowers and compiles the run's sharded train step for `devices`; returns the program."""
  run = build_lib.build(exp, devices)
  with run.context():
    return run.train_step.lower(run.abstract, run.abstract_batch()).compile()


def memory_report(compiled, topology):
  m = compiled.memory_analysis()
  devices = {d for s in jax.tree.leaves(compiled.input_shardings) for d in s.device_set}
  hbm = HBM_GIB[topology.split(":")[0]] * 2**30
  total = (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )
  return {
    "topology": topology,
    "devices": len(devices),  # what the compiled program spans
    "slices": len({getattr(d, "slice_index", 0) for d in devices}),  # one slice names none
    "argument_bytes": m.argument_size_in_bytes,
    "output_bytes": m.output_size_in_bytes,
    "temp_bytes": m.temp_size_in_bytes,
    "alias_bytes": m.alias_size_in_bytes,
    "total_bytes": total,
    "hbm_bytes": hbm,
    "fits": total <= hbm,
  }
