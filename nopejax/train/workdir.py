"""A run's workdir: WORKDIR/config.json, checkpoints/, params/ (see the README's layout)."""

import json
import os
import tempfile

import ml_collections

from nopejax.train import build as build_lib
from nopejax.train import checkpoint as checkpoint_lib
from nopejax.train import params_io


def check_workdir(workdir):
  try:
    os.makedirs(workdir, exist_ok=True)
    # A name of its own per process: several processes probe one shared workdir at once.
    with tempfile.NamedTemporaryFile("w", dir=workdir, prefix=".write_test") as f:
      f.write("ok")
  except OSError as e:
    raise ValueError(f"--workdir: cannot write to {workdir!r}: {e.strerror}") from None


def load_params(workdir, abstract_params):
  """WORKDIR/params/ restored onto `abstract_params`' shapes and shardings."""
  return params_io.load_params(os.path.join(workdir, "params"), abstract_params)


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


def latest_params(exp, workdir):
  """Params of the newest intact checkpoint in `workdir`, else its params/ export."""
  run = build_lib.build(exp)
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    ckpt = checkpoint_lib.Checkpointer(workdir, keep=exp.train.keep_checkpoints)
    restored = ckpt.restore_latest(run.abstract)
    ckpt.close()
    if restored:
      return restored[1]["params"]
  if os.path.isdir(os.path.join(workdir, "params")):
    return load_params(workdir, run.abstract["params"])
  raise ValueError(f"--workdir: {workdir!r} holds no checkpoint and no params/ export")
