"""Learning-rate schedules and the AdamW optimizer (optax)."""

import jax
import optax


def schedule(opt_cfg, steps):
  """warmup + cosine, warmup-stable-decay (SmolLM3's) or warmup + constant, from optax pieces."""
  peak, warmup = opt_cfg.lr, opt_cfg.warmup_steps
  final = peak * opt_cfg.min_lr_ratio
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if opt_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), final)
  if opt_cfg.schedule == "constant":
    return optax.join_schedules([warm, optax.constant_schedule(peak)], [warmup])
  decay_steps = int(round(steps * opt_cfg.decay_fraction))
  stable_steps = max(steps - warmup - decay_steps, 0)
  return optax.join_schedules(
      [warm, optax.constant_schedule(peak), optax.linear_schedule(peak, final, max(decay_steps, 1))],
      [warmup, warmup + stable_steps])


def decay_mask(params):
  """Weight decay on matrices only: norm scales, biases and the T5 bias table are left alone."""
  def decays(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name != "scale" and not name.endswith("bias")
  return jax.tree_util.tree_map_with_path(decays, params)


def make(opt_cfg, steps):
  """Clipping then AdamW; returns (optax transform, schedule)."""
  lr = schedule(opt_cfg, steps)
  parts = [optax.clip_by_global_norm(opt_cfg.clip_norm)] if opt_cfg.clip_norm > 0 else []
  parts.append(optax.adamw(lr, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                           weight_decay=opt_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts), lr
