"""One way to build a run: specs -> mesh, rules, shardings, abstract state and the jitted steps.

The training loop, `bench`, `aot` and evaluation (which restores the state) all call `build`,
so the program they run, time, compile or restore is the same one.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nopejax.model import api as model_api
from nopejax.parallel import mesh as mesh_lib
from nopejax.train import optimizer, step

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a step of `exp` needs, built once. Steps are jitted, not yet compiled."""

  exp: Any  # experiment.Experiment
  mesh: jax.sharding.Mesh
  batch_sharding: jax.sharding.NamedSharding
  tx: optax.GradientTransformation
  lr_fn: Callable
  abstract: dict  # the train state as ShapeDtypeStructs carrying their shardings
  shardings: dict  # the train state's NamedShardings
  train_step: Callable  # (state, batch) -> (state, metrics), donates the state
  eval_step: Callable  # (params, batch) -> sums

  @contextlib.contextmanager
  def context(self):
    """The mesh and logical-axis rules every trace and call of this run happens under."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.exp.mesh.rules):
      yield

  def init_state(self):
    """A fresh state, created sharded (a jitted init with out_shardings)."""
    init = functools.partial(step.init_state, self.exp.model, self.tx, self.exp.train.seed)
    with self.context():
      return jax.jit(init, out_shardings=self.shardings)()

  def global_batch(self, batch):
    """This process's rows of a batch -> global arrays on the mesh."""
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)), batch
    )

  def abstract_batch(self):
    """The batch as ShapeDtypeStructs, for compiling without data (aot)."""
    shape = (self.exp.data.batch_size, self.exp.data.seq_len)
    return {
      k: jax.ShapeDtypeStruct(
        shape, jnp.float32 if k == "loss_mask" else jnp.int32, sharding=self.batch_sharding
      )
      for k in BATCH_KEYS
    }


def state_shardings(spec, tx, mesh, rules, seed):
  """(abstract state carrying its shardings, the NamedShardings): parameters by their logical
  axes, the rest replicated."""
  abstract = jax.eval_shape(functools.partial(step.init_state, spec, tx, seed))
  param_shardings = mesh_lib.logical_shardings(
    model_api.param_axes(spec), abstract["params"], mesh, rules
  )
  replicated = mesh_lib.replicated(mesh)
  opt_shardings = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract["opt_state"],
    param_shardings,
    transform_non_params=lambda _: replicated,
  )
  shardings = {
    "step": replicated,
    "params": param_shardings,
    "opt_state": opt_shardings,
    "bad_steps": replicated,
  }
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  return abstract, shardings


def build(exp, devices=None):
  """The Run of `exp` on `devices` (default: all of jax's); shape errors name their keys."""
  devices = jax.devices() if devices is None else devices
  mesh_lib.check_divisible(exp.model, exp.mesh, exp.data.batch_size, len(devices), exp.data.seq_len)
  mesh = mesh_lib.make_mesh(exp.mesh, devices)
  rules = exp.mesh.rules
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)
  tx, lr_fn = optimizer.make(exp.opt, exp.train.steps)
  abstract, shardings = state_shardings(exp.model, tx, mesh, rules, exp.train.seed)
  train_step = jax.jit(
    functools.partial(
      step.train_step,
      spec=exp.model,
      tx=tx,
      lr_fn=lr_fn,
      z_loss=exp.opt.z_loss,
      microbatches=exp.opt.microbatches,
      documents=exp.data.pack,
    ),
    in_shardings=(shardings, batch_sharding),
    out_shardings=(shardings, None),
    donate_argnums=0,
  )
  eval_step = jax.jit(
    functools.partial(step.eval_step, spec=exp.model, documents=exp.data.pack),
    in_shardings=(shardings["params"], batch_sharding),
  )
  return Run(
    exp=exp,
    mesh=mesh,
    batch_sharding=batch_sharding,
    tx=tx,
    lr_fn=lr_fn,
    abstract=abstract,
    shardings=shardings,
    train_step=train_step,
    eval_step=eval_step,
  )
