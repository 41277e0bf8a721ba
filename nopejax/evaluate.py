"""python -m nopejax.evaluate --config=configs/X.py --workdir=DIR [--compare=DIR1,DIR2,...]

Evaluates the latest checkpoint of DIR (or of every run in --compare) and writes
DIR/eval/results.json, tables.md and accuracy.png; the table is also printed.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nopejax import evaluation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file; default: DIR/config.json.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run to evaluate; with --compare, where the "
                               "comparison is written.")
_COMPARE = flags.DEFINE_list("compare", [], "Several run directories to put in one table and plot.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  workdirs = _COMPARE.value or [_WORKDIR.value]
  if not workdirs or not all(workdirs):
    sys.exit("error: give --workdir=DIR or --compare=DIR1,DIR2")
  try:
    runs, cfg = evaluation.evaluate_runs(workdirs, _CONFIG.value if not _COMPARE.value else None)
  except ValueError as e:
    sys.exit(f"error: {e}")
  out = os.path.join(_WORKDIR.value or workdirs[0], "eval")
  print(evaluation.write_outputs(runs, cfg, out))
  print(f"wrote {out}/results.json, tables.md, accuracy.png")


if __name__ == "__main__":
  app.run(main)
