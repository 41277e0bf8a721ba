"""The persistent compilation cache: a restarted run loads its compiled steps instead of
compiling them again (SmolLM3-3B's step takes 84 s to compile for v5p on a CPU host).

jax keys each entry by the program, the compiler flags and the devices, so one directory serves
every config and machine kind. `train.compilation_cache_dir` names it (a local path or a bucket
URL, which jax reads through etils epath); "" means this user's cache, "off" disables it. The
cache is trusted code: point it only at a directory no one else can write.
"""

import collections
import os

import jax
from jax.experimental.compilation_cache import compilation_cache

from nopejax import storage

OFF = "off"
# Counts of jax's cache events in this process, for the log ("cache_hits", "cache_misses").
events = collections.Counter()


def _count(event, **kwargs):
  del kwargs
  prefix = "/jax/compilation_cache/"
  if event.startswith(prefix):
    events[event[len(prefix) :]] += 1


jax.monitoring.register_event_listener(_count)


def directory(setting: str) -> str | None:
  """The cache directory `train.compilation_cache_dir` names, or None when it is off."""
  if setting == OFF:
    return None
  return os.fspath(storage.path(setting) if setting else storage.cache_home() / "jax_cache")


def enable(setting: str) -> str | None:
  """Points jax's persistent cache at `directory(setting)`; returns it."""
  path = directory(setting)
  if path == jax.config.jax_compilation_cache_dir:
    return path
  if path is not None:
    storage.path(path).mkdir(parents=True, exist_ok=True)
  # Every program, however quick to compile: a restart of a small model should not compile either.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_compilation_cache_dir", path)
  compilation_cache.reset_cache()  # jax reads the directory once; a new one needs a reset
  return path
