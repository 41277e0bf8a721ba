"""The device mesh (data, fsdp, context, tensor) and the mapping of logical axis names onto it."""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nopejax.parallel.spec import AXES


def mesh_shape(mesh_spec, num_devices):
  """Resolves -1 (at most one, parallel/spec.py) so the axes multiply to the device count."""
  sizes = mesh_spec.sizes()
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh: axes of size {known} do not divide the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh: data*fsdp*context*tensor = {'*'.join(map(str, sizes))} = {math.prod(sizes)} "
      f"but there are {num_devices} devices"
    )
  return dict(zip(AXES, sizes))


def make_mesh(mesh_spec, devices=None):
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_spec, len(devices))
  return Mesh(np.asarray(devices).reshape([shape[a] for a in AXES]), AXES)


def check_divisible(spec, mesh_spec, batch_size, num_devices, seq_len=None):
  """Named errors for shapes the mesh cannot split, before anything compiles."""
  shape = mesh_shape(mesh_spec, num_devices)
  if shape["context"] > 1 and seq_len is not None and seq_len % (2 * shape["context"]):
    raise ValueError(
      f"data.seq_len={seq_len} is not divisible by 2 * mesh.context={2 * shape['context']} "
      "(context parallelism gives each device one chunk from each end of the sequence)"
    )
  batch_shards = shape["data"] * shape["fsdp"]
  if batch_size % batch_shards:
    raise ValueError(
      f"data.batch_size={batch_size} is not divisible by the batch axes "
      f"mesh.data*mesh.fsdp={batch_shards}"
    )
  for key in ("num_heads", "num_kv_heads"):
    if getattr(spec, key) % shape["tensor"]:
      raise ValueError(
        f"mesh.tensor={shape['tensor']} does not divide model.{key}={getattr(spec, key)}"
      )


def _fit(spec, shape, mesh):
  """Drops mesh axes from dims they do not divide (e.g. a 259-token vocab over tensor=2)."""
  dims = []
  for axes, size in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = tuple(a for a in names if size % mesh.shape[a] == 0)
    dims.append(kept[0] if len(kept) == 1 else (kept or None))
  return P(*dims)


def logical_shardings(logical_specs, abstract, mesh, rules):
  """PartitionSpecs of logical names -> NamedShardings on the mesh, per the config's rules."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(
    lambda spec, a: NamedSharding(mesh, _fit(spec, a.shape, mesh)),
    mesh_specs,
    abstract,
    is_leaf=lambda x: isinstance(x, P),
  )


def batch_sharding(mesh, rules):
  """Rows over the batch axes, whole: with context parallelism each process still feeds whole
  rows, and the model shards the sequence of its activations (logical axis `length`)."""
  spec = nn.logical_to_mesh_axes(("batch", None), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh):
  return NamedSharding(mesh, P())
