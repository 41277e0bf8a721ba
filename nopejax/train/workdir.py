"""A run's workdir: WORKDIR/config.json, checkpoints/, params/ (see the README's layout); a local
directory or a bucket URL."""

import json

import ml_collections

from nopejax import storage
from nopejax.train import build as build_lib
from nopejax.train import checkpoint as checkpoint_lib
from nopejax.train import params_io


def check_workdir(workdir):
  """WORKDIR as a path, created and proven writable, else one line naming it."""
  return storage.check_writable(workdir, "--workdir")


def load_params(workdir, abstract_params):
  """WORKDIR/params/ restored onto `abstract_params`' shapes and shardings."""
  return params_io.load_params(storage.path(workdir) / "params", abstract_params)


def export_params(workdir, params):
  """Params only, for evaluation and the Hugging Face exporter: WORKDIR/params/."""
  params_io.save_params(storage.path(workdir) / "params", params, force=True)


def load_config(workdir):
  """The resolved config a run wrote to WORKDIR/config.json."""
  path = storage.path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"--workdir: {workdir!r} has no config.json; pass --config")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def latest_params(exp, workdir):
  """Params of the newest intact checkpoint in `workdir`, else its params/ export."""
  run = build_lib.build(exp)
  root = storage.path(workdir)
  if (root / "checkpoints").is_dir():
    ckpt = checkpoint_lib.Checkpointer(workdir, keep=exp.train.keep_checkpoints)
    restored = ckpt.restore_latest(run.abstract)
    ckpt.close()
    if restored:
      return restored[1]["params"]
  if (root / "params").is_dir():
    return load_params(workdir, run.abstract["params"])
  raise ValueError(f"--workdir: {workdir!r} holds no checkpoint and no params/ export")
