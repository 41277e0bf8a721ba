"""Where metrics go: DIR/metrics.jsonl, TensorBoard event files, and a rich progress bar."""

import json
import os

import jax
import numpy as np
from rich import progress as rich_progress
from tensorboardX import SummaryWriter

from nopejax import storage


def summarize(fetched, *, step, elapsed, tokens):
  """One log row from the per-step metrics of a logging window (already on the host)."""
  mean = lambda k: float(np.mean([m[k] for m in fetched]))
  return {
    "step": step,
    "loss": mean("loss"),
    "accuracy": mean("accuracy"),
    "lr": float(fetched[-1]["lr"]),
    "grad_norm": mean("grad_norm"),
    "skipped_steps": int(sum(int(m["skipped"]) for m in fetched)),
    "tokens_per_s": tokens / max(elapsed, 1e-9),
    "step_s": elapsed / len(fetched),
  }


class _Jsonl:
  """metrics.jsonl, appended to. A bucket object cannot be appended to: there the whole file
  (a few hundred bytes a row) is written again with each row, so a kill loses no written row."""

  def __init__(self, path):
    self.path = path
    if storage.is_remote(path):
      self.lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    else:
      self.file = open(path, "a")

  def write(self, line):
    if storage.is_remote(self.path):
      self.lines.append(line)
      storage.write_text(self.path, "".join(self.lines))
    else:
      self.file.write(line)
      self.file.flush()

  def close(self):
    if not storage.is_remote(self.path):
      self.file.close()


class Writer:
  """Process 0 writes; other processes keep the same interface and write nothing."""

  def __init__(self, workdir, *, total_steps, start_step, progress=True):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    workdir = storage.path(workdir)
    self.jsonl = _Jsonl(workdir / "metrics.jsonl")
    # tensorboardX writes gs:// through google-cloud-storage, local paths itself.
    self.tb = SummaryWriter(os.fspath(workdir / "tensorboard"))
    self.bar = None
    if progress:
      self.bar = rich_progress.Progress(
        rich_progress.TextColumn("step {task.completed}/{task.total}"),
        rich_progress.BarColumn(),
        rich_progress.TextColumn("{task.fields[info]}"),
        rich_progress.TimeRemainingColumn(),
        transient=False,
      )
      self.task = self.bar.add_task("train", total=total_steps, completed=start_step, info="")
      self.bar.start()

  def write(self, row):
    if not self.active:
      return
    self.jsonl.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):  # not the sources' names
        self.tb.add_scalar(key, value, row["step"])
    if self.bar is not None:
      info = " ".join(f"{k}={row[k]:.4g}" for k in ("loss", "val_loss", "tokens_per_s") if k in row)
      self.bar.update(self.task, completed=row["step"], info=info)

  def close(self):
    if not self.active:
      return
    if self.bar is not None:
      self.bar.stop()
    self.tb.close()
    self.jsonl.close()
