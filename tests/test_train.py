"""Training: the real command, the loss going down, schedules, accumulation, bad input."""

import glob
import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

from nopejax import data as data_lib
from nopejax import experiment
from nopejax.parallel import mesh as mesh_lib
from nopejax.train import loop, optimizer
from nopejax.train import spec as train_spec
from nopejax.train import step as step_lib
from nopejax.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402


def run_cli(module, *args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  if check and proc.returncode:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def tiny_config(tmp_path, **overrides):
  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path / "data")
  for key, value in overrides.items():
    group, field = key.split(".")
    cfg[group][field] = value
  return cfg


def _model_spec(cfg):
  return experiment.resolve(cfg).model


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_trains_through_the_real_command(tmp_path):
  workdir = tmp_path / "run"
  run_cli(
    "nopejax.train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--config.train.steps=10",
    "--config.model.d_model=48",
    "--config.model.positions=rope,nope",
  )
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["d_model"] == 48 and config["model"]["positions"] == "rope,nope"
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [5, 10]
  assert all(k in rows[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s"))
  assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
  # The override reached the model: the trained parameters have the overridden width.
  params = workdir_lib.latest_params(
    experiment.resolve(workdir_lib.load_config(str(workdir))), str(workdir)
  )
  assert params["embedding"].shape[1] == 48


def test_loss_falls_on_copy(tmp_path):
  cfg = tiny_config(
    tmp_path,
    **{
      "train.steps": 150,
      "train.log_every": 25,
      "train.eval_every": 0,
      "train.checkpoint_every": 150,
    },
  )
  loop.run(experiment.resolve(cfg), str(tmp_path / "run"))
  losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
  # Below the entropy of a uniform guess over the 26 letters copied: the copy has been learned
  # in part, not only the answer format.
  assert losses[-1] < 0.7 * losses[0] and losses[-1] < np.log(26), losses


@pytest.mark.parametrize("name", ["cosine", "wsd", "constant"])
def test_schedule_shapes(name):
  opt = train_spec.opt_config()
  opt.schedule, opt.lr, opt.warmup_steps, opt.min_lr_ratio, opt.decay_fraction = (
    name,
    1.0,
    10,
    0.1,
    0.2,
  )
  lr = optimizer.schedule(opt, 100)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  end = float(lr(100))
  if name == "cosine":
    assert float(lr(55)) == pytest.approx(0.55, abs=1e-6)  # halfway down the cosine
    assert end == pytest.approx(0.1)
  elif name == "wsd":
    assert float(lr(50)) == pytest.approx(1.0) and float(lr(80)) == pytest.approx(1.0)
    assert float(lr(90)) == pytest.approx(0.55)  # halfway through the linear decay
    assert end == pytest.approx(0.1)
  else:
    assert float(lr(50)) == pytest.approx(1.0) and end == pytest.approx(1.0)


def test_weight_decay_skips_norms_and_biases():
  params = {
    "embedding": 1,
    "layers": {"block_0": {"attn_norm": {"scale": 1}, "attn": {"q": 1, "q_bias": 1, "t5_bias": 1}}},
  }
  mask = optimizer.decay_mask(params)
  assert mask["embedding"] and mask["layers"]["block_0"]["attn"]["q"]
  assert not mask["layers"]["block_0"]["attn_norm"]["scale"]
  assert not mask["layers"]["block_0"]["attn"]["q_bias"]
  assert not mask["layers"]["block_0"]["attn"]["t5_bias"]


def _one_step(cfg, batch, microbatches):
  spec = _model_spec(cfg)
  tx, lr_fn = optimizer.make(cfg.opt, cfg.train.steps)
  state = step_lib.init_state(spec, tx, 0)
  step = jax.jit(
    lambda s, b: step_lib.train_step(
      s, b, spec=spec, tx=tx, lr_fn=lr_fn, z_loss=1e-4, microbatches=microbatches
    )
  )
  return step(state, batch)


def test_gradient_accumulation_equals_large_batch(tmp_path):
  cfg = tiny_config(tmp_path)
  batch = next(data_lib.train_iter(experiment.resolve(cfg).data))
  one, m1 = _one_step(cfg, batch, 1)
  four, m4 = _one_step(cfg, batch, 4)
  assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-6)
  np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    one["params"],
    four["params"],
  )


def test_non_finite_step_is_skipped(tmp_path):
  cfg = tiny_config(tmp_path)
  batch = dict(next(data_lib.train_iter(experiment.resolve(cfg).data)))
  spec = _model_spec(cfg)
  tx, lr_fn = optimizer.make(cfg.opt, cfg.train.steps)
  state = step_lib.init_state(spec, tx, 0)
  batch["inputs"] = np.full_like(batch["inputs"], 10**6)  # out of range: NaN embeddings
  # Jitted, as the loop runs it (eagerly, forward's checked mode refuses the ids up front).
  step = jax.jit(
    lambda state, batch: step_lib.train_step(
      state, batch, spec=spec, tx=tx, lr_fn=lr_fn, z_loss=0.0, microbatches=1
    )
  )
  new, metrics = step(state, batch)
  assert int(metrics["skipped"]) == 1 and int(new["bad_steps"]) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), new["params"], state["params"])


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("train.steps", 0, "train.steps"),
    ("opt.lr", 5.0, "opt.lr"),
    ("opt.lr", -1e-3, "opt.lr"),
    ("data.batch_size", 0, "data.batch_size"),
    ("opt.schedule", "linear", "opt.schedule"),
    ("opt.microbatches", 3, "opt.microbatches"),
  ],
)
def test_bad_values_fail_before_compiling(tmp_path, key, value, message):
  cfg = tiny_config(tmp_path, **{key: value})
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    loop.run(experiment.resolve(cfg), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="--workdir"):
    loop.run(experiment.resolve(tiny_config(tmp_path)), str(blocker / "run"))


def test_batch_not_divisible_by_data_axes(tmp_path):
  cfg = tiny_config(tmp_path)
  cfg.data.batch_size = 6
  with pytest.raises(ValueError, match=r"data\.batch_size=6"):
    exp = experiment.resolve(cfg)
    mesh_lib.check_divisible(exp.model, exp.mesh, exp.data.batch_size, 4)


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--config.model.no_such_key=1", "no_such_key"),
    ("--config.train.steps=many", "train.steps"),
  ],
)
def test_cli_rejects_unknown_keys_and_wrong_types(tmp_path, flag, message):
  proc = run_cli(
    "nopejax.train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", flag, check=False
  )
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not (tmp_path / "run").exists()
