"""Preemption: SIGTERM means save at the next step boundary and stop."""

import signal
import threading

import jax
from jax.experimental import multihost_utils

_SIGTERM = threading.Event()  # process-wide and never cleared: the process was told to stop


def watch_sigterm():
  """From now on SIGTERM sets a flag instead of killing a single-process program.

  Training checks it at every step boundary; a sweep checks it between runs, so a TERM that
  arrives while the sweep evaluates a finished run still stops the sweep.
  """
  if jax.process_count() == 1:
    signal.signal(signal.SIGTERM, lambda *_: _SIGTERM.set())


def stop_requested():
  return _SIGTERM.is_set()


class Preemption:
  """SIGTERM means: save at the next step boundary and stop.

  One process watches SIGTERM itself. With several processes, jax.distributed's preemption
  service (started by initialize) catches the signal on whichever host gets it and agrees on
  a step every process reaches, so they all save the same step.
  """

  def __init__(self):
    watch_sigterm()

  def reached(self, step):
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return stop_requested()
