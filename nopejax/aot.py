"""python -m nopejax.aot --config=configs/X.py --topology=v5p:2x2x1 [--num_slices=2]

Compiles the real sharded train step for a TPU topology on any host (libtpu from the `tpu`
extra; no TPU needed) and reports per-device memory against the chip's HBM. Exits non-zero
when the step does not fit. With --num_slices=N the program spans N such slices, placed by
mesh.dcn_data and mesh.dcn_fsdp (their product must be N).
"""

import json
import sys

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nopejax import cli, experiment  # noqa: E402
from nopejax.tools import aot  # first: it allows several libtpu loads before jax starts one

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/X.py[:arg]).", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
  "topology", "v5e:2x2", f"TPU topology, one of {', '.join(aot.TOPOLOGIES)}."
)
_NUM_SLICES = flags.DEFINE_integer(
  "num_slices", 1, "Slices of --topology joined by DCN.", lower_bound=1
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  try:
    devices = aot.topology_devices(_TOPOLOGY.value, _NUM_SLICES.value)
    report = aot.memory_report(
      aot.compile_train_step(experiment.resolve(_CONFIG.value), devices), _TOPOLOGY.value
    )
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # The TPU compiler itself refuses programs that cannot fit in HBM.
    sys.exit(
      f"error: the train step needs more than the "
      f"{aot.HBM_GIB[_TOPOLOGY.value.split(':')[0]]:.2f} GiB of HBM of a "
      f"{_TOPOLOGY.value.split(':')[0]} chip: {str(e).splitlines()[0]}; shard more "
      "(mesh.fsdp), remat (model.remat) or shrink data.batch_size"
    )
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  slices = f" x {_NUM_SLICES.value} slices" if _NUM_SLICES.value > 1 else ""
  print(
    f"{_TOPOLOGY.value}{slices}: {len(devices)} devices; per device: arguments "
    f"{gib(report['argument_bytes'])}, temporaries {gib(report['temp_bytes'])}, outputs "
    f"{gib(report['output_bytes'])} (aliased {gib(report['alias_bytes'])}); total "
    f"{gib(report['total_bytes'])} of {gib(report['hbm_bytes'])} HBM"
  )
  print(json.dumps(report))
  if not report["fits"]:
    sys.exit(
      f"error: the train step needs {gib(report['total_bytes'])} per device but a "
      f"{_TOPOLOGY.value.split(':')[0]} chip has {gib(report['hbm_bytes'])} of HBM; "
      "shard more (mesh.fsdp), remat (model.remat) or shrink data.batch_size"
    )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
