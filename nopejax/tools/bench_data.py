"""Input-pipeline throughput (`python -m nopejax.bench_data`): examples/s and tokens/s of the
training iterator.

The dataset is built (or found) first, and the first batch, which starts the
pipeline, is timed apart from the steady state. `tokens_per_s` counts real
tokens (segment_ids > 0), `rows_per_s` whole rows, `examples_per_s` documents.
A benchmark, not a test: nothing is asserted.
"""

import time

from nopejax.data import pipeline


def measure(data_cfg, num_batches: int) -> dict:
  """Times `num_batches` batches of a fresh single-process train iterator."""
  start = time.perf_counter()
  it = pipeline.train_iter(data_cfg, process_index=0, process_count=1)
  next(it)
  first_s = time.perf_counter() - start
  rows = tokens = examples = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
    segment_ids = batch["segment_ids"]
    rows += len(segment_ids)
    tokens += int((segment_ids > 0).sum())
    examples += int(segment_ids.max(axis=1).sum())  # segments are numbered 1..n per row
  seconds = time.perf_counter() - start
  return {
    "kind": data_cfg.kind,
    "seq_len": data_cfg.seq_len,
    "batch_size": data_cfg.batch_size,
    "pack": data_cfg.pack,
    "num_workers": data_cfg.num_workers,
    "batches": num_batches,
    "first_batch_s": round(first_s, 3),
    "examples_per_s": round(examples / seconds, 1),
    "rows_per_s": round(rows / seconds, 1),
    "tokens_per_s": round(tokens / seconds, 1),
    "fill": round(tokens / (rows * data_cfg.seq_len), 3),  # real tokens / row slots
  }
