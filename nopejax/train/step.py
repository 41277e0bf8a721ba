"""The pure train and eval steps and the train state they update.

The state is a dict: `step`, `params`, `opt_state` and `bad_steps` (consecutive non-finite
steps). `train_step(state, batch) -> (state, metrics)` is jitted once by train/build.py.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from nopejax.model import api as model_api
from nopejax.train import loss


def loss_sums(spec, params, batch, z_loss=0.0, documents=True):
  """Masked sums over one (micro)batch: objective, cross-entropy, token count, correct count.

  The logits are computed `model.loss_chunk` tokens at a time (train/loss.py). documents=False
  (`data.pack=False`: one document per row, padding after it) drops the segment ids, so the
  attention kernels that would need them as a dense mask (cuDNN) run without one."""
  x_BTD, head_DV = model_api.hidden(
    spec,
    params,
    batch["inputs"],
    segment_ids=batch["segment_ids"] if documents else None,
    positions=batch["positions"],
  )
  sums = loss.token_sums(
    x_BTD, head_DV, batch["targets"], batch["loss_mask"], z_loss=z_loss, chunk=spec.loss_chunk
  )
  objective = sums.pop("objective")
  sums["tokens"] = jnp.sum(batch["loss_mask"].astype(jnp.float32))
  return objective, sums


def _split_microbatches(batch, k):
  return jax.tree.map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)


def train_step(state, batch, *, spec, tx, lr_fn, z_loss, microbatches, documents=True):
  """One optimizer step; a non-finite loss or gradient norm leaves params and optimizer as they
  were.

  Gradients of the summed objective are accumulated over microbatches and divided by the total
  number of loss tokens once, so k microbatches equal one batch k times as large.
  """
  params = state["params"]
  grad_fn = jax.grad(
    functools.partial(loss_sums, spec, z_loss=z_loss, documents=documents), has_aux=True
  )

  def accumulate(carry, microbatch):
    grads, sums = grad_fn(params, microbatch)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  if microbatches == 1:
    # No scan of length one: it would only add a loop (and its copies) around the whole step.
    grads, sums = grad_fn(params, batch)
  else:
    zeros = (jax.tree.map(jnp.zeros_like, params), {"ce": 0.0, "tokens": 0.0, "correct": 0.0})
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
    "bad_steps": jnp.where(ok, 0, state["bad_steps"] + 1),
  }
  metrics = {
    "loss": loss,
    "grad_norm": grad_norm,
    "lr": lr_fn(state["step"]),
    "accuracy": sums["correct"] / count,
    "loss_tokens": sums["tokens"],
    "skipped": 1 - ok.astype(jnp.int32),
    "bad_steps": new_state["bad_steps"],
  }
  return new_state, metrics


def eval_step(params, batch, *, spec, documents=True):
  _, sums = loss_sums(spec, params, batch, documents=documents)
  return sums


def init_state(spec, tx, seed):
  params = model_api.init(spec, jax.random.key(seed))
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "opt_state": tx.init(params),
    "bad_steps": jnp.zeros((), jnp.int32),
  }
