"""Where metrics go: DIR/metrics.jsonl, TensorBoard event files, and a rich progress bar."""

import json
import os

import jax
import numpy as np
from rich import progress as rich_progress
from tensorboardX import SummaryWriter


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


class Writer:
  """Process 0 writes; other processes keep the same interface and write nothing."""

  def __init__(self, workdir, *, total_steps, start_step, progress=True):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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
    self.jsonl.flush()
    for key, value in row.items():
      if key != "step":
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
