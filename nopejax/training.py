"""The train state, the pure train step, and the training loop behind `python -m nopejax.train`."""

import functools
import json
import os
import signal
import tempfile
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from nopejax import checkpoint as checkpoint_lib
from nopejax import data as data_lib
from nopejax import experiment
from nopejax import metrics as metrics_lib
from nopejax import model_api
from nopejax import optimizer as optimizer_lib
from nopejax import params_io
from nopejax import sharding


# ----------------------------------------------------------------------------- loss and step

def loss_sums(spec, params, batch, z_loss=0.0):
  """Masked sums over one (micro)batch: objective, cross-entropy, token count, correct count."""
  logits_BTV = model_api.forward(spec, params, batch["inputs"],
                                 segment_ids=batch["segment_ids"], positions=batch["positions"])
  logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, batch["targets"][..., None], -1)[..., 0]
  ce_BT = logz_BT - target_logit_BT
  mask_BT = batch["loss_mask"].astype(jnp.float32)
  correct_BT = (jnp.argmax(logits_BTV, -1) == batch["targets"]).astype(jnp.float32)
  sums = {"ce": jnp.sum(ce_BT * mask_BT), "tokens": jnp.sum(mask_BT),
          "correct": jnp.sum(correct_BT * mask_BT)}
  objective = jnp.sum((ce_BT + z_loss * logz_BT ** 2) * mask_BT)
  return objective, sums


def _split_microbatches(batch, k):
  return jax.tree.map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)


def train_step(state, batch, *, spec, tx, lr_fn, z_loss, microbatches):
  """One optimizer step; a non-finite loss or gradient norm leaves params and optimizer as they were.

  Gradients of the summed objective are accumulated over microbatches and divided by the total
  number of loss tokens once, so k microbatches equal one batch k times as large.
  """
  params = state["params"]
  grad_fn = jax.grad(functools.partial(loss_sums, spec, z_loss=z_loss), has_aux=True)

  def accumulate(carry, microbatch):
    grads, sums = grad_fn(params, microbatch)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  if microbatches == 1:
    # No scan of length one: it would only add a loop (and its copies) around the whole step.
    grads, sums = grad_fn(params, batch)
  else:
    zeros = (jax.tree.map(jnp.zeros_like, params),
             {"ce": 0.0, "tokens": 0.0, "correct": 0.0})
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, _split_microbatches(batch, microbatches))
  count = jnp.maximum(sums["tokens"], 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  loss = sums["ce"] / count
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state["opt_state"], params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = {
      "step": state["step"] + 1,
      "params": keep(new_params, params),
      "opt_state": keep(opt_state, state["opt_state"]),
      "rng": jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0)),
      "bad_steps": jnp.where(ok, 0, state["bad_steps"] + 1),
  }
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_fn(state["step"]),
             "accuracy": sums["correct"] / count, "loss_tokens": sums["tokens"],
             "skipped": 1 - ok.astype(jnp.int32), "bad_steps": new_state["bad_steps"]}
  return new_state, metrics


def eval_step(params, batch, *, spec):
  _, sums = loss_sums(spec, params, batch)
  return sums


# ----------------------------------------------------------------------------- state

def init_state(spec, tx, seed):
  params = model_api.init(spec, jax.random.key(seed))
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
          "rng": jax.random.key_data(jax.random.key(seed + 1)),
          "bad_steps": jnp.zeros((), jnp.int32)}


def state_shardings(spec, tx, mesh, mesh_cfg, seed):
  """(abstract state carrying its shardings, the NamedShardings): parameters by their logical
  axes, the rest replicated."""
  abstract = jax.eval_shape(functools.partial(init_state, spec, tx, seed))
  param_shardings = sharding.logical_shardings(model_api.param_axes(spec), abstract["params"],
                                               mesh, mesh_cfg)
  replicated = sharding.replicated(mesh)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract["opt_state"], param_shardings,
      transform_non_params=lambda _: replicated)
  shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings,
               "rng": replicated, "bad_steps": replicated}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


# ----------------------------------------------------------------------------- preemption

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


# ----------------------------------------------------------------------------- loop

def _check_workdir(workdir):
  try:
    os.makedirs(workdir, exist_ok=True)
    # A name of its own per process: several processes probe one shared workdir at once.
    with tempfile.NamedTemporaryFile("w", dir=workdir, prefix=".write_test") as f:
      f.write("ok")
  except OSError as e:
    raise ValueError(f"--workdir: cannot write to {workdir!r}: {e.strerror}") from None


def _global_batch(batch, batch_sharding):
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)), batch)


def evaluate_loss(cfg, spec, params, eval_fn, batch_sharding):
  """Validation loss and accuracy over train.eval_batches batches."""
  totals = {"ce": 0.0, "tokens": 0.0, "correct": 0.0}
  for i, batch in enumerate(data_lib.eval_iter(cfg.data, "validation")):
    if i >= cfg.train.eval_batches:
      break
    sums = jax.device_get(eval_fn(params, _global_batch(batch, batch_sharding)))
    totals = {k: totals[k] + float(sums[k]) for k in totals}
  count = max(totals["tokens"], 1.0)
  return {"val_loss": totals["ce"] / count, "val_accuracy": totals["correct"] / count}


def run(cfg, workdir):
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint; returns the final params."""
  spec = experiment.validate(cfg)
  _check_workdir(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json(indent=2))

  # --- mesh
  sharding.check_divisible(spec, cfg.mesh, cfg.data.batch_size, jax.device_count())
  mesh = sharding.make_mesh(cfg.mesh)
  rules = sharding.rules(cfg.mesh)
  batch_sharding = sharding.batch_sharding(mesh, cfg.mesh)

  # --- input
  train_iter = data_lib.train_iter(cfg.data, process_index=jax.process_index(),
                                   process_count=jax.process_count())

  # --- model, optimizer, sharded state
  tx, lr_fn = optimizer_lib.make(cfg.opt, cfg.train.steps)
  abstract, shardings = state_shardings(spec, tx, mesh, cfg.mesh, cfg.train.seed)

  # --- checkpoint: resume automatically
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints)
  restored = ckpt.restore_latest(abstract)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    if restored:
      start, state, data_state = restored
      train_iter.set_state(data_state)
      logging.warning("resumed from step %d of %s", start, workdir)
    else:
      start = 0
      state = jax.jit(functools.partial(init_state, spec, tx, cfg.train.seed),
                      out_shardings=shardings)()
      if cfg.train.init_from:
        state["params"] = _load_init_params(cfg.train.init_from, abstract["params"])

  # --- update step, jitted once with donation
  step_fn = jax.jit(
      functools.partial(train_step, spec=spec, tx=tx, lr_fn=lr_fn, z_loss=cfg.opt.z_loss,
                        microbatches=cfg.opt.microbatches),
      in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
      donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, spec=spec),
                    in_shardings=(shardings["params"], batch_sharding))

  # --- loop
  writer = metrics_lib.Writer(workdir, total_steps=cfg.train.steps, start_step=start,
                              progress=cfg.train.progress)
  preemption = Preemption()
  tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
  pending = []
  window_start = time.perf_counter()
  step = start
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      while step < cfg.train.steps:
        batch = _global_batch(next(train_iter), batch_sharding)
        state, metrics = step_fn(state, batch)
        pending.append(metrics)
        step += 1
        last = step == cfg.train.steps
        if step % cfg.train.log_every == 0 or last:
          fetched = jax.device_get(pending)
          elapsed = time.perf_counter() - window_start
          row = metrics_lib.summarize(fetched, step=step, elapsed=elapsed,
                                      tokens=tokens_per_step * len(fetched))
          pending, window_start = [], time.perf_counter()
          writer.write(row)
          if fetched[-1]["bad_steps"] >= cfg.train.max_bad_steps:
            raise RuntimeError(
                f"stopping at step {step}: {fetched[-1]['bad_steps']} consecutive steps had a "
                f"non-finite loss or gradient norm (train.max_bad_steps="
                f"{cfg.train.max_bad_steps}); the last checkpoint holds the last finite state")
        if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or last):
          writer.write(dict(step=step, **evaluate_loss(cfg, spec, state["params"], eval_fn,
                                                       batch_sharding)))
        preempted = preemption.reached(step)
        if step % cfg.train.checkpoint_every == 0 or last or preempted:
          ckpt.save(step, state, train_iter.get_state(), cfg.to_dict())
        if preempted:
          logging.warning("preempted (SIGTERM): saved step %d and stopping", step)
          break
  finally:
    writer.close()
    ckpt.close()
  if step == cfg.train.steps and cfg.train.export_params:
    export_params(workdir, state["params"])
  return state["params"]


def _load_init_params(init_from, abstract_params):
  return params_io.load_params(os.path.join(init_from, "params"), abstract_params)


def export_params(workdir, params):
  """Params only, for evaluation and the Hugging Face exporter: WORKDIR/params/."""
  params_io.save_params(os.path.join(os.path.abspath(workdir), "params"), params, force=True)


def load_config(workdir):
  """The resolved config a run wrote to WORKDIR/config.json."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"--workdir: {workdir!r} has no config.json; pass --config")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def latest_params(cfg, workdir):
  """Params of the newest intact checkpoint in `workdir`, else its params/ export."""
  spec = experiment.validate(cfg)
  tx, _ = optimizer_lib.make(cfg.opt, cfg.train.steps)
  mesh = sharding.make_mesh(cfg.mesh)
  abstract, _ = state_shardings(spec, tx, mesh, cfg.mesh, cfg.train.seed)
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    ckpt = checkpoint_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints)
    restored = ckpt.restore_latest(abstract)
    ckpt.close()
    if restored:
      return restored[1]["params"]
  if os.path.isdir(os.path.join(workdir, "params")):
    return _load_init_params(workdir, abstract["params"])
  raise ValueError(f"--workdir: {workdir!r} holds no checkpoint and no params/ export")
