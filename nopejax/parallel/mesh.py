"""The device mesh (data, fsdp, context, tensor) and the mapping of logical axis names onto it.

Over several slices the axes stay these four: `mesh.dcn_data` and `mesh.dcn_fsdp` multiply data
and fsdp from outside (parallel/spec.py), so only their collectives cross the slow network.
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nopejax.parallel.spec import AXES


def slice_shape(mesh_spec, num_devices):
  """One slice's axes: -1 (at most one, parallel/spec.py) resolved so that they multiply to the
  devices of a slice, num_devices / (dcn_data * dcn_fsdp)."""
  slices = mesh_spec.num_slices
  if num_devices % slices:
    raise ValueError(
      f"mesh: {num_devices} devices do not split into mesh.dcn_data*mesh.dcn_fsdp = "
      f"{mesh_spec.dcn_data}*{mesh_spec.dcn_fsdp} = {slices} slices"
    )
  per_slice = num_devices // slices
  devices = f"{per_slice} devices" + (" per slice" if slices > 1 else "")
  sizes = mesh_spec.sizes()
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if per_slice % known:
      raise ValueError(f"mesh: axes of size {known} do not divide the {devices}")
    sizes[sizes.index(-1)] = per_slice // known
  if math.prod(sizes) != per_slice:
    raise ValueError(
      f"mesh: data*fsdp*context*tensor = {'*'.join(map(str, sizes))} = {math.prod(sizes)} "
      f"but there are {devices}"
    )
  return dict(zip(AXES, sizes))


def mesh_shape(mesh_spec, num_devices):
  """The global mesh: each in-slice axis times its DCN factor."""
  ici = slice_shape(mesh_spec, num_devices)
  return {a: ici[a] * dcn for a, dcn in zip(AXES, mesh_spec.dcn_sizes())}


def device_array(mesh_spec, devices):
  """`devices` laid out as the mesh; each slice is one block, the DCN factors outermost.

  TPU devices (topology devices for AOT too) name their slice in `slice_index`, and jax's hybrid
  mesh lays out each slice by its torus. Other devices name none: one process is one slice when
  the process count is the slice count (GPU hosts), else equal contiguous runs of `devices`
  stand in for slices (host devices of one process, in tests), each laid out like one slice.
  """
  ici = list(slice_shape(mesh_spec, len(devices)).values())
  dcn = mesh_spec.dcn_sizes()
  slices = mesh_spec.num_slices
  tpu = devices[0].platform == "tpu"
  # Slices on TPUs (one-slice topology devices carry no slice_index), else processes.
  granules = len({getattr(d, "slice_index", 0) if tpu else d.process_index for d in devices})
  if tpu and granules != slices:
    raise ValueError(
      f"mesh.dcn_data*mesh.dcn_fsdp = {mesh_spec.dcn_data}*{mesh_spec.dcn_fsdp} but the "
      f"devices are on {granules} slice{'s' * (granules > 1)}"
    )
  if slices == 1:
    return np.asarray(devices).reshape(ici)
  if granules == slices:
    return mesh_utils.create_hybrid_device_mesh(
      ici, dcn, devices, process_is_granule=not tpu, allow_split_physical_axes=True
    )
  # What the hybrid mesh builds for CPUs from these runs: in-slice reshapes placed on the DCN grid.
  runs = np.asarray(devices).reshape(dcn[:2] + ici)  # [dcn_data, dcn_fsdp, data, fsdp, ...]
  return runs.transpose(0, 2, 1, 3, 4, 5).reshape([i * d for i, d in zip(ici, dcn)])


def make_mesh(mesh_spec, devices=None):
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(device_array(mesh_spec, devices), AXES)


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
    axes = "mesh.data*mesh.fsdp"
    if mesh_spec.num_slices > 1:
      axes = "mesh.dcn_data*mesh.data*mesh.dcn_fsdp*mesh.fsdp"
    raise ValueError(
      f"data.batch_size={batch_size} is not divisible by the batch axes {axes}={batch_shards}"
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
