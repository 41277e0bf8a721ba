"""Input-pipeline throughput: examples/s and tokens/s of `train_iter`, as one JSON line.

  python -m nopejax.bench_data --config=configs/tiny.py --batches=200
  python -m nopejax.bench_data --config=configs/tiny.py --config.data.kind=text \
      --config.data.seq_len=1024 --config.data.num_workers=2

The dataset is built (or found) first, and the first batch, which starts the
pipeline, is timed apart from the steady state. `tokens_per_s` counts real
tokens (segment_ids > 0), `rows_per_s` whole rows, `examples_per_s` documents.
A benchmark, not a test: nothing is asserted.
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


def main(argv):
  del argv
  cfg = _CONFIG.value if _CONFIG.value is not None else experiment.base_config()
  exp = experiment.resolve(cfg)
  print(json.dumps(bench_data.measure(exp.data, _BATCHES.value)), flush=True)


if __name__ == "__main__":
  cli.run(main)
