"""python -m nopejax.sweep --config=configs/X.py[:arg] --workdir=DIR [--launcher=local|slurm|print]

Expands the config file's `get_sweep(arg)` (a list of {dotted key: value} overrides) into runs,
each in DIR/<its overrides>. `local` trains them one after another in this process (finished
runs are skipped, unfinished ones resume) and evaluates each into DIR/<run>/eval as it finishes
(reused while its newest checkpoint and eval group are unchanged), then compares them all in
one table and plot in DIR/eval and writes a summary of final metrics to DIR/summary.md.
`slurm` submits the runs as one job array through launch/slurm.sbatch (task i trains and
evaluates run i, as `local` would; logs in DIR/slurm-JOB_TASK.out; `--sbatch_args` for the
resources), waits for it, then writes the same comparison and summary. `print` prints one
train command per run.

  python -m nopejax.sweep --config=configs/tiny.py --workdir=/shared/sweep --launcher=slurm \
    --sbatch_args="--partition=gpu --gpus-per-task=1"
"""

import shlex
import sys

from absl import app, flags, logging

from nopejax import cli
from nopejax.tools import sweep

_CONFIG = flags.DEFINE_string(
  "config", None, "Config file with get_config and get_sweep: path[:arg]."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.")
_LAUNCHER = flags.DEFINE_enum(
  "launcher",
  "local",
  ["local", "slurm", "print", "slurm_task"],
  "Run here, as a SLURM job array, or print commands (slurm_task: what each array task runs).",
)
_EVALUATE = flags.DEFINE_bool("evaluate", True, "Evaluate each run and compare them all.")
_SBATCH_ARGS = flags.DEFINE_string(
  "sbatch_args", "", "More sbatch options for --launcher=slurm's job array, shell-quoted."
)


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
    if _LAUNCHER.value == "slurm":
      sweep.run_slurm(
        _CONFIG.value,
        runs,
        _WORKDIR.value,
        evaluate=_EVALUATE.value,
        sbatch_args=shlex.split(_SBATCH_ARGS.value),
      )
    elif _LAUNCHER.value == "slurm_task":
      sweep.run_slurm_task(runs, _WORKDIR.value, evaluate=_EVALUATE.value)
    else:
      sweep.run_local(runs, _WORKDIR.value, evaluate=_EVALUATE.value)
  except sweep.RunError as e:
    sys.exit(str(e))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
