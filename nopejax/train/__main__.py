"""python -m nopejax.train --config=configs/X.py[:arg] --workdir=DIR [--config.a.b=v ...]

Resumes from DIR when it holds checkpoints. Multi-process: --coordinator_address,
--num_processes, --process_id (jax.distributed.initialize's arguments); on TPU VMs and under
SLURM jax detects them itself.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nopejax import cli, experiment
from nopejax.parallel import distributed
from nopejax.train import loop

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/X.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where config.json, metrics and checkpoints go.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax narrates every save at INFO
  distributed.initialize()
  try:
    loop.run(experiment.resolve(_CONFIG.value), _WORKDIR.value)
  except RuntimeError as e:  # a run that stopped itself (non-finite losses); bad input: cli.run
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  cli.run(main)
