"""python -m nopejax.report --sweep=DIR[,DIR2...] [--out=FILE] [--plot=FILE.png]

Ranks the schemes of scheme x task x seed sweeps (configs/lengthgen.py) by accuracy beyond the
training length and reports each scheme's mean reciprocal rank, as Kazemnejad et al. 2023 do;
nopejax/eval/report.py says how.
"""

import sys

from absl import app, flags

from nopejax import cli
from nopejax.eval import report

_SWEEP = flags.DEFINE_list("sweep", None, "Sweep directories run by `python -m nopejax.sweep`.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown here.")
_PLOT = flags.DEFINE_string("plot", None, "Also plot accuracy by length per task and scheme (PNG).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    text = report.write(_SWEEP.value, _OUT.value, _PLOT.value)
  except (OSError, KeyError, ValueError) as e:
    sys.exit(f"error: --sweep={','.join(_SWEEP.value)}: {e}")
  print(text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["sweep"])
  cli.run(main)
