"""Orbax checkpoints of (train state, data iterator state, config), with integrity manifests.

Orbax writes each step into a temporary directory and renames it when complete, so a kill mid-save
never leaves a half step behind, and old steps are only deleted after a new one is finalized.
What orbax cannot see is later damage (a truncated or deleted file): each finished step gets a
manifest of file sizes and CRC32s, checked before restore; a damaged step is moved aside to
`checkpoints_damaged/` (never deleted) and the previous one is used.
"""

import json
import os
import shutil
import zlib

import jax
import orbax.checkpoint as ocp
from absl import logging

MANIFEST = "nopejax_manifest.json"


def _crc32(path):
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir):
  for root, _, names in os.walk(step_dir):
    for name in names:
      if name != MANIFEST:
        path = os.path.join(root, name)
        yield os.path.relpath(path, step_dir), path


def write_manifest(step_dir):
  entries = {rel: [os.path.getsize(p), _crc32(p)] for rel, p in _files(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(entries, f)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def check_manifest(step_dir):
  """Returns None when the step's files match its manifest, else what is wrong."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return "no integrity manifest (the run stopped before it was written)"
  with open(path) as f:
    entries = json.load(f)
  for rel, (size, crc) in entries.items():
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return f"missing file {rel}"
    if os.path.getsize(full) != size:
      return f"file {rel} has {os.path.getsize(full)} bytes, expected {size}"
    if _crc32(full) != crc:
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


class Checkpointer:
  """Saves and restores train state + data iterator state + config under WORKDIR/checkpoints."""

  def __init__(self, workdir, *, keep, async_save=True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.damaged_dir = os.path.abspath(os.path.join(workdir, "checkpoints_damaged"))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    handlers = {
      "state": ocp.StandardCheckpointHandler(),
      "data": ocp.JsonCheckpointHandler(),
      "config": ocp.JsonCheckpointHandler(),
    }
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def _step_dir(self, step):
    return os.path.join(self.directory, str(step))

  def _finish_manifests(self):
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self.manager.all_steps():
        if not os.path.exists(os.path.join(self._step_dir(step), MANIFEST)):
          write_manifest(self._step_dir(step))

  def save(self, step, state, data_state, config_json):
    self._finish_manifests()
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": data_state}),
        config=ocp.args.JsonSave(json.loads(config_json)),
      ),
    )

  def close(self):
    self._finish_manifests()
    self.manager.close()

  def steps(self):
    return sorted(self.manager.all_steps())

  def _set_aside(self, step, why):
    logging.warning(
      "checkpoint step %d is damaged (%s); skipping it and moving it to %s",
      step,
      why,
      self.damaged_dir,
    )
    if jax.process_index() == 0:
      os.makedirs(self.damaged_dir, exist_ok=True)
      shutil.move(self._step_dir(step), os.path.join(self.damaged_dir, str(step)))
    self.manager.reload()

  def check_compatible(self, step, abstract_state):
    """Raises before anything is touched when the saved shapes do not fit the model config."""
    saved = self.manager.item_metadata(step)["state"]
    problem = _shape_mismatch(saved["params"], abstract_state["params"])
    if problem:
      raise ValueError(
        f"checkpoint {self._step_dir(step)} does not fit this model config: {problem}"
      )

  def restore_latest(self, abstract_state):
    """(step, state, data_state) from the newest intact checkpoint, or None when there is none.

    `abstract_state` carries the target shardings, so a checkpoint saved on one mesh restores
    onto another.
    """
    steps = self.steps()
    if steps:
      self.check_compatible(steps[-1], abstract_state)
    for step in reversed(steps):
      problem = check_manifest(self._step_dir(step))
      if problem and "no integrity manifest" not in problem:
        self._set_aside(step, problem)
        continue
      try:
        target = _with_retired(abstract_state, self.manager.item_metadata(step)["state"])
        restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
          ),
        )
      except Exception as e:  # orbax raises many types for unreadable files
        self._set_aside(step, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        continue
      state = {k: v for k, v in restored["state"].items() if k in abstract_state}
      return step, state, restored["data"]["iterator"]
    return None
