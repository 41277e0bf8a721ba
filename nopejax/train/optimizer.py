"""Learning-rate schedules and the AdamW optimizer (optax)."""

import jax
import optax


def schedule(opt, steps):
  """warmup + cosine, warmup-stable-decay (SmolLM3's) or warmup + constant, from optax pieces."""
  peak, warmup = opt.lr, opt.warmup_steps
  final = peak * opt.min_lr_ratio
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), final)
  if opt.schedule == "constant":
    return optax.join_schedules([warm, optax.constant_schedule(peak)], [warmup])
  decay_steps = int(round(steps * opt.decay_fraction))
  stable_steps = max(steps - warmup - decay_steps, 0)
  return optax.join_schedules(
    [warm, optax.constant_schedule(peak), optax.linear_schedule(peak, final, max(decay_steps, 1))],
    [warmup, warmup + stable_steps],
  )


def decay_mask(params):
  """Weight decay on matrices only: norm scales, biases and the T5 bias table are left alone."""

  def decays(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name != "scale" and not name.endswith("bias")

  return jax.tree_util.tree_map_with_path(decays, params)


def make(opt, steps):
  """Clipping then AdamW; returns (optax transform, schedule)."""
  lr = schedule(opt, steps)
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
  parts.append(
    optax.adamw(
      lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask
    )
  )
  return optax.chain(*parts), lr
