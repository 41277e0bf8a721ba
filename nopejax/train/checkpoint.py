"""Orbax checkpoints of (train state, the global data position, config), with integrity
manifests, restored by one decision that every process shares.

Orbax writes each step into a temporary directory and renames it when complete (on a bucket, it
writes a commit file last), so a kill mid-save never leaves a half step behind, and old steps are
only deleted after a new one is finalized. What orbax cannot see is later damage (a truncated or
deleted file): once a step is final, each process, in a background thread, writes a manifest of
the sizes and CRC32s of the files it wrote; before a restore each process checks its own files.

Which step to restore is decided once for all processes: process 0 names the newest step, every
process checks its part of it, and the verdicts are gathered, so all processes restore the same
step or all skip it. A damaged step is moved aside to `checkpoints_damaged/` (never deleted) by
process 0 alone, after which every process reloads the step list.
"""

import concurrent.futures
import json
import os
import re
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from nopejax import storage

MANIFEST = "nopejax_manifest.process_{}.json"
_LEGACY_MANIFEST = "nopejax_manifest.json"  # nopejax 0.1: one manifest, written by process 0
_COMMIT_FILE = "commit_success.txt"  # orbax's end-of-save marker on a bucket
_OWNER = re.compile(r"(?:^|[/._])process_(\d+)")  # orbax's per-process file names


def _crc32_and_size(p):
  crc, size = 0, 0
  with p.open("rb") as f:
    while chunk := f.read(1 << 24):
      crc, size = zlib.crc32(chunk, crc), size + len(chunk)
  return crc, size


def _owner(rel):
  """The process that wrote file `rel` of a step: the one its name says, else process 0 (the
  primary writes orbax's metadata, the JSON items and the merged array index)."""
  match = _OWNER.search(rel)
  return int(match.group(1)) if match else 0


def _is_manifest(rel):
  return rel.startswith("nopejax_manifest")


def write_manifest(step_dir, process=0):
  """Records size and CRC32 of every file of `step_dir` that process `process` wrote."""
  entries = {}
  for rel, p in storage.walk_files(step_dir):
    if not _is_manifest(rel) and _owner(rel) == process:
      crc, size = _crc32_and_size(p)
      entries[rel] = [size, crc]
  storage.write_json(storage.path(step_dir) / MANIFEST.format(process), entries)


def check_manifest(step_dir, process=0):
  """None when the files process `process` wrote match its manifest (or it has none yet: a run
  stopped before writing it), else what is wrong."""
  step_dir = storage.path(step_dir)
  names = [MANIFEST.format(process)] + ([_LEGACY_MANIFEST] if process == 0 else [])
  for name in names:
    if not (step_dir / name).exists():
      continue
    for rel, (size, crc) in storage.read_json(step_dir / name).items():
      f = step_dir / rel
      if not f.exists():
        return f"missing file {rel}"
      got_crc, got_size = _crc32_and_size(f)
      if got_size != size:
        return f"file {rel} has {got_size} bytes, expected {size}"
      if got_crc != crc:
        return f"file {rel} fails its CRC32 check"
  return None


def _shape_mismatch(saved_tree, abstract_tree):
  """The first parameter whose saved shape differs from the model's, as a message."""
  saved = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(saved_tree)}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_tree):
    name = jax.tree_util.keystr(path)
    if name not in saved:
      return f"{name} is missing from the checkpoint"
    if tuple(saved[name].shape) != tuple(leaf.shape):
      return (
        f"{name} has shape {tuple(saved[name].shape)} in the checkpoint, "
        f"but the model config gives {tuple(leaf.shape)}"
      )
  extra = sorted(
    set(saved)
    - {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(abstract_tree)}
  )
  return f"{extra[0]} is in the checkpoint but not in the model" if extra else None


def _with_retired(abstract_state, saved_state):
  """The restore target: `abstract_state` plus the top-level entries an older nopejax saved and
  this one no longer keeps (0.1's unused `rng`), restored replicated and then dropped."""
  replicated = abstract_state["step"].sharding
  retired = {
    k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), v)
    for k, v in saved_state.items()
    if k not in abstract_state
  }
  return {**abstract_state, **retired}


def _why(e: Exception) -> str:
  """An exception as one short line, for the damaged-step warning."""
  return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _agree(flag: bool) -> bool:
  """True on every process when `flag` is True on any."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _from_process_0(value: int) -> int:
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


class Checkpointer:
  """Saves and restores train state + data position + config under WORKDIR/checkpoints.

  Every process of a job constructs one and makes the same calls in the same order.
  """

  def __init__(self, workdir, *, keep, async_save=True, manifests=True):
    root = storage.path(workdir)
    self.directory = root / "checkpoints"
    self.damaged_dir = root / "checkpoints_damaged"
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    handlers = {
      "state": ocp.StandardCheckpointHandler(),
      "data": ocp.JsonCheckpointHandler(),  # the global data position, equal on every process
      "config": ocp.JsonCheckpointHandler(),
    }
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self.manifests = manifests  # off only to measure what they cost (nopejax.bench_checkpoint)
    self._unverified = []  # saved steps whose manifest is not yet started
    self._manifests = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="manifest")

  def _step_dir(self, step):
    return self.directory / str(step)

  # --- integrity, off the step loop
  def _finalized(self, step):
    d = self._step_dir(step)
    return d.exists() and (not storage.is_remote(d) or (d / _COMMIT_FILE).exists())

  def _pending(self, step):
    """False once `step` is neither being saved nor saved: max_to_keep deleted it. The temporary
    directory is looked at first: a rename to the final name would otherwise slip between the
    two checks."""
    saving = any(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
    return saving or self._step_dir(step).exists()

  def _manifest_job(self, step, timeout_s=1800):
    # This process may finish its part of a save before the primary renames (commits) the step,
    # and a step may be deleted (max_to_keep) before its manifest is started.
    deadline = time.monotonic() + timeout_s
    while not self._finalized(step):
      if time.monotonic() > deadline or not self._pending(step):
        return
      time.sleep(0.2)
    try:
      write_manifest(self._step_dir(step), jax.process_index())
    except Exception as e:  # max_to_keep deleted the step meanwhile, or the storage failed
      if self._step_dir(step).exists():
        logging.warning("no integrity manifest for checkpoint step %d: %s", step, e)

  def poll(self):
    """Starts the manifests of steps whose save has finished; cheap, called from the loop."""
    if self._unverified and not self.manager.is_saving_in_progress():
      for step in self._unverified:
        self._manifests.submit(self._manifest_job, step)
      self._unverified = []

  def save(self, step, state, data_state, config_json):
    """Starts an async save of `step`; `data_state` is the (global) data iterator position."""
    self.poll()
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(json.loads(config_json)),
      ),
    )
    if self.manifests:
      self._unverified.append(step)

  def close(self):
    self.manager.wait_until_finished()
    self.poll()
    self._manifests.shutdown(wait=True)
    self.manager.close()

  def steps(self):
    return sorted(self.manager.all_steps())

  # --- restore: one decision for every process
  def _inspect(self, step):
    """(the saved state's metadata, None) when this process's part of `step` is intact, else
    (None, what is wrong): a file failing its manifest, or metadata that does not read."""
    try:
      problem = check_manifest(self._step_dir(step), jax.process_index())
      return (None, problem) if problem else (self.manager.item_metadata(step)["state"], None)
    except Exception as e:  # orbax and json raise many types for unreadable files
      return None, _why(e)

  def _set_aside(self, step, why):
    logging.warning(
      "checkpoint step %d is damaged (%s); skipping it and moving it to %s",
      step,
      why,
      os.fspath(self.damaged_dir),
    )
    if jax.process_index() == 0:
      storage.move_tree(self._step_dir(step), self.damaged_dir / str(step))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"nopejax_set_aside_{step}")
    self.manager.reload()

  def _check_compatible(self, step, saved, abstract_state):
    """Raises before anything is touched when the saved shapes do not fit the model config."""
    problem = _shape_mismatch(saved["params"], abstract_state["params"])
    if problem:
      raise ValueError(
        f"checkpoint {os.fspath(self._step_dir(step))} does not fit this model config: {problem}"
      )

  def restore_latest(self, abstract_state):
    """(step, state, data_state) from the newest intact checkpoint, or None when there is none.

    `abstract_state` carries the target shardings, so a checkpoint saved on one mesh restores
    onto another.
    """
    tried = set()
    while True:
      newest = _from_process_0(max((s for s in self.steps() if s not in tried), default=-1))
      if newest < 0:
        return None
      tried.add(newest)
      saved, problem = self._inspect(newest)
      if _agree(problem is not None):
        self._set_aside(newest, problem or "damaged on another process")
        continue
      self._check_compatible(newest, saved, abstract_state)
      try:
        restored = self.manager.restore(
          newest,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_with_retired(abstract_state, saved)),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
          ),
        )
        failure = None
      except Exception as e:  # orbax raises many types for unreadable files
        failure = _why(e)
      if _agree(failure is not None):
        self._set_aside(newest, failure or "restore failed on another process")
        continue
      state = {k: v for k, v in restored["state"].items() if k in abstract_state}
      data = restored["data"]  # nopejax 0.1 saved {"iterator": its grain state}
      return newest, state, data.get("iterator", data)
