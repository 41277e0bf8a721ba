"""The training loop behind `python -m nopejax.train`: build, restore or init, step, log, save.

Sections read top to bottom as one run does: the run (mesh, shardings, jitted step), the
input, the state (restored or fresh), the loop (log, validate, checkpoint, preemption).
"""

import time

import jax
from absl import logging

from nopejax import storage
from nopejax.data import pipeline
from nopejax.train import build as build_lib
from nopejax.train import checkpoint as checkpoint_lib
from nopejax.train import compile_cache, efficiency
from nopejax.train import metrics as metrics_lib
from nopejax.train import profile as profile_lib
from nopejax.train import workdir as workdir_lib
from nopejax.train.preemption import Preemption


def evaluate_loss(run, params, batches):
  """Validation loss and accuracy over train.eval_batches batches of `batches` (an EvalBatches
  of the validation split, read once per run)."""
  totals = {"ce": 0.0, "tokens": 0.0, "correct": 0.0}
  for i, batch in enumerate(batches):
    if i >= run.exp.train.eval_batches:
      break
    sums = jax.device_get(run.eval_step(params, run.global_batch(batch)))
    totals = {k: totals[k] + float(sums[k]) for k in totals}
  count = max(totals["tokens"], 1.0)
  return {"val_loss": totals["ce"] / count, "val_accuracy": totals["correct"] / count}


def _startup(started, cache_before):
  """The first log row's account of a (re)start: seconds to the first step, cache hits."""
  seen = lambda k: compile_cache.events[k] - cache_before.get(k, 0)
  return {
    "startup_s": time.perf_counter() - started,
    "compile_cache_hits": seen("cache_hits"),
    "compile_cache_misses": seen("cache_misses"),
  }


def run(exp, workdir):
  """Trains the Experiment `exp` in `workdir`, resuming from its latest checkpoint; returns the
  final params."""
  started = time.perf_counter()
  goodput = efficiency.Goodput()
  t = exp.train
  workdir = workdir_lib.check_workdir(workdir)
  if jax.process_index() == 0:
    storage.write_text(workdir / "config.json", exp.config_json)

  # --- run: mesh, shardings, the jitted steps (loaded from the compilation cache when cached)
  compile_cache.enable(t.compilation_cache_dir)
  cache_before = dict(compile_cache.events)
  r = build_lib.build(exp)
  live = efficiency.Live(exp.model, exp.data.seq_len)

  # --- input: every process builds the same global order and takes its rows of each batch
  train_iter = pipeline.train_iter(exp.data)
  validation = pipeline.EvalBatches(exp.data, "validation") if t.eval_every else None

  # --- state: resume automatically, else init (from train.init_from when given)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=t.keep_checkpoints)
  with goodput.timing("restore"):
    restored = ckpt.restore_latest(r.abstract)
    if restored:
      start, state, data_state = restored
      pipeline.restore_position(train_iter, data_state, start)
      logging.warning("resumed from step %d of %s", start, workdir)
    else:
      start, state = 0, r.init_state()
      if t.init_from:
        state["params"] = workdir_lib.load_params(t.init_from, r.abstract["params"])

  # --- loop
  writer = metrics_lib.Writer(workdir, total_steps=t.steps, start_step=start, progress=t.progress)
  preemption = Preemption()
  profile = profile_lib.Profile(workdir, t.profile_steps, start_step=start)
  tokens_per_step = exp.data.batch_size * exp.data.seq_len
  pending, startup = [], {}
  batches = pipeline.Prefetch(train_iter, r.global_batch)  # the next batch, on the devices
  step = start
  try:
    with r.context():
      if step < t.steps:
        with goodput.timing("data"):
          batch = next(batches)
        with goodput.timing("compile"):  # apart from the first step, so the account tells them
          train_step = r.train_step.lower(state, batch).compile()
      window_start = time.perf_counter()
      goodput.start_laps()
      while step < t.steps:
        profile.before(step + 1)
        with profile.annotate(step + 1):
          state, metrics = train_step(state, batch)
        pending.append(metrics)
        step += 1
        with goodput.timing("profile"):
          profile.after(step, metrics)
        if step == start + 1:  # time to first step: restore, compile (or cache load), one step
          jax.block_until_ready(metrics)
          startup = {**_startup(started, cache_before), **live.startup()}
        last = step == t.steps
        if step % t.log_every == 0 or last:
          fetched = jax.device_get(pending)
          elapsed = time.perf_counter() - window_start
          row = metrics_lib.summarize(
            fetched, step=step, elapsed=elapsed, tokens=tokens_per_step * len(fetched)
          )
          goodput.lap()
          row.update(live.fields(row["tokens_per_s"]), goodput=goodput.goodput())
          writer.write({**row, **startup})
          pending, startup = [], {}
          with goodput.timing("checkpoint"):
            ckpt.poll()
          if fetched[-1]["bad_steps"] >= t.max_bad_steps:
            raise RuntimeError(
              f"stopping at step {step}: {fetched[-1]['bad_steps']} consecutive steps had a "
              f"non-finite loss or gradient norm (train.max_bad_steps={t.max_bad_steps}); "
              "the last checkpoint holds the last finite state"
            )
          window_start = time.perf_counter()
        if t.eval_every and (step % t.eval_every == 0 or last):
          with goodput.timing("eval"):
            writer.write(dict(step=step, **evaluate_loss(r, state["params"], validation)))
        preempted = preemption.reached(step)
        if step % t.checkpoint_every == 0 or last or preempted:
          with goodput.timing("checkpoint"):
            ckpt.save(step, state, batches.get_state(), exp.config_json)
        if preempted:
          logging.warning("preempted (SIGTERM): saved step %d and stopping", step)
          break
        if not last:
          with goodput.timing("data"):
            batch = next(batches)
      goodput.lap()
    if step == t.steps and t.export_params:
      workdir_lib.export_params(workdir, state["params"])
  finally:
    batches.close()
    profile.stop()
    with goodput.timing("checkpoint"):
      ckpt.close()
    account = goodput.account()
    writer.write({"step": step, **account})
    writer.close()
    if jax.process_index() == 0:
      print(efficiency.account_table(account), flush=True)
  return state["params"]
