"""python -m nopejax.sweep --config=configs/X.py[:arg] --workdir=DIR [--launcher=local|print]

Expands the config file's `get_sweep(arg)` (a list of {dotted key: value} overrides) into runs,
each in DIR/<its overrides>. `local` trains them one after another in this process (finished
runs are skipped, unfinished ones resume) and evaluates each into DIR/<run>/eval as it finishes
(reused while its newest checkpoint and eval group are unchanged), then compares them all in
one table and plot in DIR/eval and writes a summary of final metrics to DIR/summary.md;
`print` prints one train command per run.
"""

import sys

from absl import app, flags, logging

from nopejax import cli
from nopejax.tools import sweep

_CONFIG = flags.DEFINE_string(
  "config", None, "Config file with get_config and get_sweep: path[:arg]."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.")
_LAUNCHER = flags.DEFINE_enum(
  "launcher", "local", ["local", "print"], "Run here, or print commands."
)
_EVALUATE = flags.DEFINE_bool("evaluate", True, "After local runs, evaluate and compare them.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    module, arg = sweep.load_config_module(_CONFIG.value)
    runs = sweep.expand(module, arg)
    if _LAUNCHER.value == "print":
      print("\n".join(sweep.commands(_CONFIG.value, _WORKDIR.value, runs)))
      return
    sweep.run_local(runs, _WORKDIR.value, evaluate=_EVALUATE.value)
  except sweep.RunError as e:
    sys.exit(str(e))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
