"""The evaluate command: a trained copy model at 100%, LM loss = the training loss, outputs per
kind and --compare, RoPE scaling, and bad input refused in one line."""

import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nopejax
from nopejax import data as data_lib
from nopejax import experiment
from nopejax.eval import lm as lm_eval
from nopejax.eval import runner
from nopejax.model.schemes import rope as rope_lib
from nopejax.train import loop
from nopejax.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402

# The cheapest tiny copy setting found to reach 100% on every training length (1..3) in about
# 25 s of training on 2 CPU cores: 2 layers 64 wide (the tiny default of 32 wide with 6 training
# lengths stays near 50% at these budgets).
COPY_TRAINING = (
  "--config.data.train_length=3",
  "--config.data.test_length=5",
  "--config.data.num_train=5000",
  "--config.data.batch_size=32",
  "--config.model.positions=rope",
  "--config.model.d_model=64",
  "--config.model.num_heads=4",
  "--config.model.num_kv_heads=4",
  "--config.opt.lr=1e-2",
  "--config.opt.weight_decay=0",
  "--config.train.steps=400",  # 300 left one length-3 example of 20 wrong in the 0.2 order
  "--config.train.log_every=100",
  "--config.train.eval_every=0",
  "--config.train.checkpoint_every=300",
)


def run_cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def text_config(tmp_path):
  """A byte-level LM on a small generated corpus, with tiny passkey and LM lengths."""
  corpus = tmp_path / "corpus"
  corpus.mkdir(exist_ok=True)
  rng = np.random.default_rng(0)
  words = ["def", "return", "self", "import", "class", "for", "in", "if", "x", "y", "=", ":"]
  for i in range(8):
    (corpus / f"f{i}.py").write_text(" ".join(rng.choice(words, 700)))
  cfg = tiny.get_config()
  cfg.data.kind, cfg.data.tokenizer, cfg.data.corpus = "text", "byte", str(corpus)
  cfg.data.val_fraction = 0.5
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.seq_len = 32
  cfg.data.passkey_lengths = (256, 320)  # a passkey prompt takes 248 bytes
  cfg.data.passkey_depths = (0.0, 1.0)
  cfg.data.num_passkey = 2
  cfg.model.vocab_size = 259
  cfg.eval.kinds = "lm,passkey"
  cfg.eval.max_examples = 4
  cfg.train.steps, cfg.train.eval_every = 2, 0
  return cfg


def test_copy_model_scores_100_percent_through_the_real_command(tmp_path):
  workdir = tmp_path / "copy"
  data = f"--config.data.data_dir={tmp_path / 'data'}"
  proc = run_cli(
    "nopejax.train", "--config=configs/tiny.py", f"--workdir={workdir}", data, *COPY_TRAINING
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run_cli("nopejax.evaluate", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "**copy** (exact_match; * = beyond training length 3)" in proc.stdout
  results = json.loads((workdir / "eval" / "results.json").read_text())["copy"]["copy"]
  assert set(results) == {"1", "2", "3", "4", "5"}
  for length in ("1", "2", "3"):
    assert results[length]["exact_match"] == 1.0, results
  for metrics in results.values():  # generation with the cache = teacher-forced exact match
    assert metrics["exact_match"] == metrics["exact_match_teacher_forced"]
  assert (workdir / "eval" / "accuracy.png").stat().st_size > 10_000


def test_lm_loss_at_a_short_context_is_the_training_loss(tmp_path):
  cfg = text_config(tmp_path)
  exp = experiment.resolve(cfg)
  spec = exp.model
  params = nopejax.init(spec, jax.random.key(0))
  docs = data_lib.text_documents(exp.data, "validation")
  length, score = cfg.data.seq_len, cfg.data.seq_len // 2
  inputs, targets = lm_eval.lm_windows(docs, length, length, score, limit=3)
  mask = np.zeros(inputs.shape, np.float32)
  mask[:, -score:] = 1
  batch = {
    "inputs": inputs,
    "targets": targets,
    "segment_ids": np.ones_like(inputs),
    "positions": np.broadcast_to(np.arange(length), inputs.shape),
    "loss_mask": mask,
  }
  _, sums = step_lib.loss_sums(spec, params, batch)
  want = float(sums["ce"] / sums["tokens"])
  cfg.eval.lm_lengths, cfg.eval.max_examples = str(length), 3
  got = lm_eval.evaluate_lm(experiment.resolve(cfg), spec, params)[length]
  assert got["tokens"] == 3 * score
  np.testing.assert_allclose(got["loss"], want, rtol=1e-5)
  np.testing.assert_allclose(got["perplexity"], np.exp(want), rtol=1e-5)
  # Bytes: every scored target is a byte token here, so bits per byte is the loss in bits.
  np.testing.assert_allclose(got["bits_per_byte"], want / np.log(2), rtol=1e-5)


def test_lm_and_passkey_tables_and_plots_with_compare(tmp_path):
  cfg = text_config(tmp_path)
  loop.run(experiment.resolve(cfg), str(tmp_path / "a"))
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  out = tmp_path / "both"
  proc = run_cli(
    "nopejax.evaluate", f"--compare={tmp_path / 'a'},{tmp_path / 'b'}", f"--workdir={out}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "**lm** (bits_per_byte" in proc.stdout and "| b | 0 |" in proc.stdout
  assert "**passkey** (accuracy by length and needle depth" in proc.stdout
  results = json.loads((out / "eval" / "results.json").read_text())
  assert set(results) == {"a", "b"}
  # Default LM lengths: half the training length to 8 times it.
  assert set(results["a"]["lm"]) == {"16", "32", "64", "128", "256"}
  assert set(results["a"]["passkey"]) == {"256", "320"}
  assert set(results["a"]["passkey"]["320"]) == {"0.0", "1.0"}
  assert results["a"] == results["b"]
  for name in ("lm.png", "passkey.png"):
    assert (out / "eval" / name).stat().st_size > 10_000, name
  tables = (out / "eval" / "tables.md").read_text()
  assert "| a | 0 | " in tables and "| b | 1 | " in tables  # passkey rows: run, depth


def test_rope_scaling_matches_its_definition():
  x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
  pos = jnp.arange(5)[None]
  rope = lambda p, **kw: np.asarray(rope_lib.rope(x, p, theta=100.0, rotary_dim=8, **kw))
  np.testing.assert_allclose(rope(2 * pos, scaling="linear", factor=2.0), rope(pos), atol=1e-5)
  ntk = np.asarray(rope_lib.rope(x, pos, theta=100.0 * 4.0 ** (8 / 6), rotary_dim=8))
  np.testing.assert_allclose(rope(pos, scaling="ntk", factor=4.0), ntk, atol=1e-5)
  for scaling in ("ntk", "yarn"):  # factor 1 changes nothing
    np.testing.assert_allclose(
      rope(pos, scaling=scaling, factor=1.0, original_len=16), rope(pos), atol=1e-6
    )
  inv_freq, attn = rope_lib.rope_frequencies(8, 100.0, "yarn", 4.0, original_len=16)
  base, _ = rope_lib.rope_frequencies(8, 100.0)
  assert inv_freq[0] == base[0] and np.isclose(inv_freq[-1], base[-1] / 4)  # fast kept, slow /4
  assert np.isclose(attn, 0.1 * np.log(4.0) + 1)


def test_rope_scaling_reaches_the_model_at_evaluation_only(tmp_path):
  cfg = tiny.get_config()
  cfg.model.positions = "rope"
  assert experiment.resolve(cfg).model.rope_scaling == "none"
  cfg.eval.rope_scaling, cfg.eval.rope_scaling_factor = "yarn", 4.0
  spec = runner.model_spec(experiment.resolve(cfg))
  assert (spec.rope_scaling, spec.rope_scaling_factor, spec.rope_original_len) == (
    "yarn",
    4.0,
    cfg.data.seq_len,
  )
  params = nopejax.init(spec, jax.random.key(0))
  tokens = jnp.arange(20)[None] % 10
  assert not np.allclose(
    nopejax.forward(spec, params, tokens), nopejax.forward(cfg.model, params, tokens)
  )
  cfg.eval.rope_scaling = "longrope"
  with pytest.raises(
    ValueError,
    match="eval.rope_scaling: unknown value 'longrope'; allowed: none, linear, ntk, dynamic, yarn, "
    "llama3",
  ):
    experiment.resolve(cfg)


# ------------------------------------------------------------------------------- bad input


def _last_line(proc):
  assert proc.returncode != 0
  return proc.stderr.strip().splitlines()[-1]


def test_workdir_without_checkpoint(tmp_path):
  proc = run_cli("nopejax.evaluate", "--config=configs/tiny.py", f"--workdir={tmp_path}")
  assert _last_line(proc) == (
    f"error: --workdir: '{tmp_path}' holds no checkpoint and no params/ export"
  )


def test_unknown_eval_kind(tmp_path):
  proc = run_cli(
    "nopejax.evaluate",
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.eval.kinds=tasks,perplexity",
  )
  assert _last_line(proc) == (
    "error: eval.kinds: unknown kind 'perplexity'; known: tasks, lm, passkey"
  )


def test_lengths_past_learned_positions_are_refused(tmp_path):
  cfg = text_config(tmp_path)
  cfg.model.input_positions, cfg.model.max_len = "learned", 64
  params = nopejax.init(cfg.model, jax.random.key(0))
  with pytest.raises(
    ValueError,
    match=r"^eval.lm_lengths=256 needs 256 positions but the "
    r"learned input positions cover model.max_len=64; evaluate shorter",
  ):
    runner.evaluate(experiment.resolve(cfg), params)


def test_outputs_and_the_cache_live_in_a_bucket(gcs_bucket, tmp_path):
  """write_outputs to gs://: results.json, tables.md and the PNG are objects; the cached results
  are read back from there and the newest checkpoint step is listed from the bucket."""
  from conftest import no_local_gs_dir

  from nopejax import storage

  exp = experiment.resolve(tiny.get_config())
  results = {"copy": {"1": {"exact_match": 1.0, "token_accuracy": 1.0}}}
  run = f"{gcs_bucket.url}/run"
  text = runner.write_outputs({"run": results}, exp, f"{run}/eval")
  assert "**copy** (exact_match" in text
  assert runner.outputs(f"{run}/eval") == ["accuracy.png", "results.json", "tables.md"]
  assert sorted(gcs_bucket.objects("run/eval/")) == [
    "run/eval/accuracy.png",
    "run/eval/results.json",
    "run/eval/tables.md",
  ]
  assert storage.path(f"{run}/eval/accuracy.png").stat().length > 10_000
  assert storage.path(f"{run}/eval/tables.md").read_text() == text
  storage.write_text(f"{run}/checkpoints/3/done", "")
  storage.write_text(f"{run}/checkpoints/12/done", "")
  assert runner._newest_step(run) == 12
  key = {"step": 12, "eval": {"kinds": "tasks"}}
  assert runner._cached(run, "run", key) is None  # no evaluated.json yet
  storage.write_json(f"{run}/eval/{runner.CACHE_KEY}", dict(key, seconds=1.0))
  assert runner._cached(run, "run", key) == results
  assert runner._cached(run, "run", dict(key, step=13)) is None
  no_local_gs_dir(tmp_path, ROOT)
