"""python -m nopejax.bench_checkpoint --config=configs/bench_cpu.py [--config.model.X=...]

How long a checkpoint save blocks the step loop, with and without the integrity manifests, at
the config's model size, as one JSON line; e.g. about 100M parameters:

  JAX_PLATFORMS=cpu python -m nopejax.bench_checkpoint --config=configs/bench_cpu.py \
      --config.model.d_model=768 --config.model.num_layers=12 --config.model.num_heads=12 \
      --config.model.num_kv_heads=4 --config.model.d_ff=3072 --config.model.vocab_size=32768

A benchmark, not a test: nothing is asserted.
"""

import json

from absl import flags, logging
from ml_collections import config_flags

from nopejax import cli, experiment
from nopejax.tools import bench_checkpoint

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (its model and opt).")
_SAVES = flags.DEFINE_integer("saves", 3, "Saves timed per setting.")
_GAP = flags.DEFINE_float("gap_s", 10.0, "Idle seconds after each save (the steps between saves).")
_DIR = flags.DEFINE_string("dir", None, "Where the temporary checkpoints go (default: $TMPDIR).")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  exp = experiment.resolve(_CONFIG.value)
  result = bench_checkpoint.measure(exp, saves=_SAVES.value, gap_s=_GAP.value, directory=_DIR.value)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  cli.run(main)
