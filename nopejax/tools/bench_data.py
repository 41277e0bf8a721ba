"""Input-pipeline throughput (`python -m nopejax.bench_data`): rows and tokens per second of the
training iterator on one core, beside what the config's training step consumes.

The documents are built (or found) first, and the first batch, which lays out the first epoch,
is timed apart from the steady state. `tokens_per_s` counts real tokens (segment_ids > 0),
`slots_per_s` row positions (rows x seq_len, real or padding: what a step consumes),
`examples_per_s` documents. With `step=True` the config's jitted train step is timed too
(nopejax.tools.bench, every core), and `pipeline_over_step` is the ratio of row positions per
second. A benchmark, not a test: nothing is asserted.
"""

import os
import time

from nopejax.data import pipeline


def cpu_model() -> str:
  """The CPU's model name, as lscpu prints it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown"


def _on_one_core():
  """Pins the calling thread to one core (Linux); returns the previous set to restore."""
  if not hasattr(os, "sched_setaffinity"):
    return None
  before = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(before)})
  return before


def measure(data_cfg, num_batches: int, *, one_core: bool = True) -> dict:
  """Times `num_batches` batches of a fresh single-process train iterator."""
  it = pipeline.train_iter(data_cfg, process_index=0, process_count=1)  # builds the documents
  previous = _on_one_core() if one_core else None
  try:
    start = time.perf_counter()
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
  finally:
    if previous is not None:
      os.sched_setaffinity(0, previous)
  return {
    "kind": data_cfg.kind,
    "seq_len": data_cfg.seq_len,
    "batch_size": data_cfg.batch_size,
    "pack": data_cfg.pack,
    "batches": num_batches,
    "cores": 1 if previous is not None else len(os.sched_getaffinity(0)),
    "cpu": cpu_model(),
    "first_batch_s": round(first_s, 3),
    "examples_per_s": round(examples / seconds, 1),
    "rows_per_s": round(rows / seconds, 1),
    "tokens_per_s": round(tokens / seconds, 1),
    "slots_per_s": round(rows * data_cfg.seq_len / seconds, 1),
    "fill": round(tokens / (rows * data_cfg.seq_len), 3),  # real tokens / row slots
  }


def measure_with_step(exp, num_batches: int, *, steps: int = 20) -> dict:
  """`measure` of exp.data, plus the train step's tokens/s (every core) and the ratio."""
  from nopejax.tools import bench  # jax and the model only when the step is timed

  report = measure(exp.data, num_batches)
  step = bench.run(exp, steps=steps, warmup=2)
  report.update(
    step_tokens_per_s=round(step["tokens_per_s"], 1),
    step_s=round(step["step_s"], 5),
    pipeline_over_step=round(report["slots_per_s"] / step["tokens_per_s"], 1),
  )
  return report
