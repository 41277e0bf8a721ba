"""Input-pipeline throughput: rows and tokens/s of `train_iter` on one core, as one JSON line.

  python -m nopejax.bench_data --config=configs/lengthgen.py --batches=300 --step
  python -m nopejax.bench_data --config=configs/tiny.py --config.data.kind=text \
      --config.data.seq_len=1024

The documents are built (or found) first, and the first batch, which lays out the first epoch,
is timed apart from the steady state. `tokens_per_s` counts real tokens (segment_ids > 0),
`slots_per_s` row positions (what a step consumes), `examples_per_s` documents. `--step` also
times the config's train step (every core) and prints `pipeline_over_step`, the ratio of row
positions per second. A benchmark, not a test: nothing is asserted.
"""

import json

from absl import flags
from ml_collections import config_flags

from nopejax import cli, experiment
from nopejax.tools import bench_data

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config; uses its `data` group."
)
_BATCHES = flags.DEFINE_integer("batches", 100, "Batches timed after the first.")
_STEP = flags.DEFINE_bool("step", False, "Also time the config's train step and print the ratio.")
_STEPS = flags.DEFINE_integer("steps", 20, "Train steps timed with --step.")


def main(argv):
  del argv
  cfg = _CONFIG.value if _CONFIG.value is not None else experiment.base_config()
  exp = experiment.resolve(cfg)
  if _STEP.value:
    report = bench_data.measure_with_step(exp, _BATCHES.value, steps=_STEPS.value)
  else:
    report = bench_data.measure(exp.data, _BATCHES.value)
  print(json.dumps(report), flush=True)


if __name__ == "__main__":
  cli.run(main)
