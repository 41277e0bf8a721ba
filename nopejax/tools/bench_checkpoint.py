"""What a checkpoint save costs the step loop: the time `Checkpointer.save` blocks, with and
without the integrity manifests, next to what the manifest costs when computed in the loop
(nopejax 0.1 read every file of the previous step before the next save).

Each save is followed by `gap_s` of idle "training" (sleep), so the background work of one save
(orbax's writes, then the manifest) can finish before the next one, as in a run whose
checkpoint_every is more than a few steps.
"""

import tempfile
import time

import jax

from nopejax import storage
from nopejax.train import build as build_lib
from nopejax.train import checkpoint as checkpoint_lib


def _params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def measure(exp, *, saves=3, gap_s=10.0, directory=None):
  run = build_lib.build(exp)
  state = run.init_state()
  jax.block_until_ready(state)
  out = {
    "params": _params(state["params"]),
    "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
  }
  with tempfile.TemporaryDirectory(dir=directory) as tmp:
    for manifests in (False, True):
      ckpt = checkpoint_lib.Checkpointer(
        storage.path(tmp) / f"manifests={manifests}", keep=2, manifests=manifests
      )
      blocked = []
      for i in range(saves):
        t0 = time.perf_counter()
        ckpt.save(i + 1, state, {"position": i}, exp.config_json)
        blocked.append(time.perf_counter() - t0)
        end = time.perf_counter() + gap_s
        while time.perf_counter() < end:  # the loop's cheap per-log-step poll
          ckpt.poll()
          time.sleep(0.05)
      ckpt.close()
      # The first save includes orbax's one-time setup; the rest are the steady state.
      out[f"save_blocking_s_manifests={manifests}"] = blocked
    step_dir = storage.path(tmp) / "manifests=True" / "checkpoints" / str(saves)
    t0 = time.perf_counter()
    checkpoint_lib.write_manifest(step_dir, 0)
    out["manifest_in_loop_s"] = time.perf_counter() - t0  # what 0.1 blocked for, every save
    out["manifest_check_s"] = _timed(checkpoint_lib.check_manifest, step_dir, 0)
  return out


def _timed(fn, *args):
  t0 = time.perf_counter()
  assert fn(*args) is None
  return time.perf_counter() - t0
