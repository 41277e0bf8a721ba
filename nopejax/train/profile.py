"""`train.profile_steps`: a jax.profiler trace of a few train steps, written where TensorBoard's
profile plugin looks (WORKDIR/tensorboard/plugins/profile/<run>/, beside the scalars) with a
Perfetto trace (`perfetto_trace.json.gz`) in the same folder for ui.perfetto.dev.

Process 0 traces (its host's view; each process's would be the same program). A bucket workdir
gets the trace copied there when it stops: the profiler writes to a local folder.
"""

import os
import tempfile

import jax
from absl import logging

from nopejax import storage


class Profile:
  """Starts the trace before step `first` and stops it once step `first + count - 1` is done."""

  def __init__(self, workdir, profile_steps, *, start_step):
    first, count = profile_steps
    self.first, self.last = first, first + count - 1
    self.active = count > 0 and jax.process_index() == 0 and start_step < first
    if count > 0 and start_step >= first:
      logging.warning("train.profile_steps starts at step %d; resumed after it, no profile", first)
    self.target = storage.path(workdir) / "tensorboard"
    self.tracing = False

  def before(self, step):
    """Called with the number of the step about to run (1-based, as logged)."""
    if self.active and step == self.first:
      self.local = (
        tempfile.mkdtemp(prefix="nopejax_profile_")
        if storage.is_remote(self.target)
        else os.fspath(self.target)
      )
      jax.profiler.start_trace(self.local, create_perfetto_trace=True)
      self.tracing = True

  def annotate(self, step):
    """The step's span in the trace, which the profile plugin's step view reads."""
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step, outputs):
    """Called after step `step` was dispatched, with its outputs (waited for before stopping)."""
    if self.tracing and step >= self.last:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self):
    if not self.tracing:
      return
    jax.profiler.stop_trace()
    self.tracing = False
    if self.local != os.fspath(self.target):
      storage.copy_tree(self.local, self.target)
      storage.remove_tree(self.local)
    logging.warning("wrote a profile of steps %d-%d to %s", self.first, self.last, self.target)
