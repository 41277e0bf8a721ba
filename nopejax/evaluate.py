"""python -m nopejax.evaluate [--config=configs/X.py] --workdir=DIR [--compare=DIR1,DIR2,...]

Evaluates the latest checkpoint of DIR (or of every run in --compare) on the kinds of
`eval.kinds` (tasks, lm, passkey) and writes DIR/eval/results.json, tables.md and a PNG per
kind (accuracy.png, lm.png, passkey.png); the tables are also printed. Without --config a run
uses its own DIR/config.json. With --compare each run keeps its own model and data config, and
--config, when given, supplies the `eval` group for all of them, so they are compared under the
same settings (e.g. --config.eval.rope_scaling=yarn).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nopejax import cli
from nopejax.eval import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file; default: DIR/config.json.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run to evaluate; with --compare, where the comparison is written."
)
_COMPARE = flags.DEFINE_list("compare", [], "Several run directories to put in one table and plot.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  workdirs = _COMPARE.value or [_WORKDIR.value]
  if not workdirs or not all(workdirs):
    sys.exit("error: give --workdir=DIR or --compare=DIR1,DIR2")
  cfg = _CONFIG.value
  if _COMPARE.value:
    runs, exp = runner.evaluate_runs(workdirs, eval_overrides=None if cfg is None else cfg.eval)
  else:
    runs, exp = runner.evaluate_runs(workdirs, cfg)
  out = os.path.join(_WORKDIR.value or workdirs[0], "eval")
  print(runner.write_outputs(runs, exp, out))
  print(f"wrote {out}/: {', '.join(runner.outputs(out))}")


if __name__ == "__main__":
  cli.run(main)
