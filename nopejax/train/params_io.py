"""Params-only checkpoints with orbax: imported weights, exported weights, `train.init_from`.

A params directory holds one pytree (the plain nested dict of `nopejax.init`), nothing else:
no optimizer state, no step, no data iterator. Training checkpoints live elsewhere.
"""

import jax
import numpy as np
import orbax.checkpoint as ocp

from nopejax import storage


def save_params(directory, params, *, force=False):
  """Writes `params` (numpy or jax arrays, sharded or not) to `directory`.

  Every process of a multi-process job must call this (orbax coordinates the writes). An
  existing directory is an error unless `force`, so trained weights are never overwritten by
  accident.
  """
  path = storage.path(directory)  # orbax wants absolute paths (or URLs)
  if path.exists() and not force:
    raise FileExistsError(f"{path} already exists; pass force=True to overwrite it")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, params, force=force)
  checkpointer.wait_until_finished()


def load_params(directory, target=None):
  """Reads params written by `save_params`.

  target: None restores host numpy arrays in the saved dtypes (whatever the saving topology
  was). An abstract pytree (`jax.ShapeDtypeStruct` leaves, with shardings for a mesh, or
  concrete arrays) restores jax arrays with its shapes, dtypes and shardings; leaves without
  a sharding go to the first device. Shapes that differ from the saved ones are an error.
  """
  path = storage.path(directory)
  if not path.is_dir():
    raise FileNotFoundError(
      f"{path}: no params directory (written by nopejax.params_io.save_params)"
    )
  checkpointer = ocp.StandardCheckpointer()
  saved = checkpointer.metadata(path).item_metadata.tree
  if target is None:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
    return ocp.PyTreeCheckpointer().restore(path, restore_args=restore_args)

  default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def abstract(leaf):
    sharding = getattr(leaf, "sharding", None) or default_sharding
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  target = jax.tree.map(abstract, target)
  want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(target)}
  have = {
    jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(saved)
  }
  if set(want) != set(have):
    raise ValueError(
      f"{path}: params tree differs from the target: missing "
      f"{sorted(set(want) - set(have))}, unexpected {sorted(set(have) - set(want))}"
    )
  for key, shape in want.items():
    if tuple(shape) != have[key]:
      raise ValueError(f"{path}: params{key} has shape {have[key]}, target expects {tuple(shape)}")
  return checkpointer.restore(path, target)
