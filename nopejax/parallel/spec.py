"""The `mesh` config group and its frozen spec: axis sizes and the logical-axis rules.

Several slices (TPU pods joined by the data-centre network, DCN) keep the same four axes: the
in-slice sizes describe one slice, and `dcn_data`, `dcn_fsdp` multiply the data and fsdp axes
from outside, so only their collectives cross slices (MaxText's layout).
"""

import dataclasses

import ml_collections

from nopejax import specs

AXES = ("data", "fsdp", "context", "tensor")


def mesh_config():
  c = ml_collections.ConfigDict()
  c.data = -1  # data-parallel axis; -1 takes the devices the other axes leave
  c.fsdp = 1  # parameters and optimizer state sharded over this axis
  c.context = 1  # context parallelism: the sequence sharded over this axis (long sequences)
  c.tensor = 1  # Megatron-style tensor parallelism over heads and MLP hidden
  # Between slices: the global data (fsdp) axis is dcn_data*data (dcn_fsdp*fsdp), slices outermost.
  c.dcn_data = 1  # slices holding replicas; only gradient all-reduces cross the DCN
  c.dcn_fsdp = 1  # slices sharing one sharded copy of the parameters (more DCN traffic)
  # Logical axis -> mesh axes; the model names its axes, only this table places them.
  c.rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("length", "context"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("buckets", None),
    ("fire_mlp", None),
    ("cope_positions", None),
  )
  return c


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """The validated `mesh` group; -1 (at most one in-slice axis) is resolved against the devices
  of one slice later."""

  data: int = -1
  fsdp: int = 1
  context: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  rules: tuple = ()

  def sizes(self):
    """In-slice sizes, in AXES order."""
    return [getattr(self, a) for a in AXES]

  def dcn_sizes(self):
    """Between-slice factors, in AXES order."""
    return [self.dcn_data, self.dcn_fsdp, 1, 1]

  @property
  def num_slices(self):
    return self.dcn_data * self.dcn_fsdp


def resolve(group) -> MeshSpec:
  m = specs.from_group(MeshSpec, group)
  for axis, size in zip(AXES, m.sizes()):
    specs.check(
      isinstance(size, int) and not (size == 0 or size < -1),
      f"mesh.{axis}: expected a positive size or -1, got {size}",
    )
  specs.check(
    m.sizes().count(-1) <= 1,
    "mesh: at most one of mesh.data, mesh.fsdp, mesh.context, mesh.tensor may be -1",
  )
  rules = tuple(
    (name, axes if axes is None or isinstance(axes, str) else tuple(axes)) for name, axes in m.rules
  )
  return dataclasses.replace(
    m,
    dcn_data=specs.positive(m.dcn_data, "mesh.dcn_data"),
    dcn_fsdp=specs.positive(m.dcn_fsdp, "mesh.dcn_fsdp"),
    rules=rules,
  )
