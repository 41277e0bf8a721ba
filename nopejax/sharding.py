"""Device mesh (data, fsdp, tensor) and the mapping of logical axis names onto it."""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg, num_devices):
  """Resolves -1 (at most one) so the axes multiply to the device count."""
  sizes = [mesh_cfg[a] for a in AXES]
  for axis, size in zip(AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis}: expected a positive size or -1, got {size}")
  if sizes.count(-1) > 1:
    raise ValueError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh: axes of size {known} do not divide the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh: data*fsdp*tensor = {'*'.join(map(str, sizes))} = {math.prod(sizes)} "
                     f"but there are {num_devices} devices")
  return dict(zip(AXES, sizes))


def make_mesh(mesh_cfg, devices=None):
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape([shape[a] for a in AXES]), AXES)


def rules(mesh_cfg):
  return tuple((name, axes if axes is None or isinstance(axes, str) else tuple(axes))
               for name, axes in mesh_cfg.rules)


def check_divisible(spec, mesh_cfg, batch_size, num_devices):
  """Named errors for shapes the mesh cannot split, before anything compiles."""
  shape = mesh_shape(mesh_cfg, num_devices)
  batch_shards = shape["data"] * shape["fsdp"]
  if batch_size % batch_shards:
    raise ValueError(f"data.batch_size={batch_size} is not divisible by the batch axes "
                     f"mesh.data*mesh.fsdp={batch_shards}")
  for key in ("num_heads", "num_kv_heads"):
    if getattr(spec, key) % shape["tensor"]:
      raise ValueError(f"mesh.tensor={shape['tensor']} does not divide "
                       f"model.{key}={getattr(spec, key)}")


def _fit(spec, shape, mesh):
  """Drops mesh axes from dims they do not divide (e.g. a 259-token vocab over tensor=2)."""
  dims = []
  for axes, size in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = tuple(a for a in names if size % mesh.shape[a] == 0)
    dims.append(kept[0] if len(kept) == 1 else (kept or None))
  return P(*dims)


def logical_shardings(logical_specs, abstract, mesh, mesh_cfg):
  """PartitionSpecs of logical names -> NamedShardings on the mesh, per the config's rules."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules(mesh_cfg))
  return jax.tree.map(lambda spec, a: NamedSharding(mesh, _fit(spec, a.shape, mesh)),
                      mesh_specs, abstract, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh, mesh_cfg):
  spec = nn.logical_to_mesh_axes(("batch", "length"), rules(mesh_cfg))
  return NamedSharding(mesh, spec)


def replicated(mesh):
  return NamedSharding(mesh, P())
