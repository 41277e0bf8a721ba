"""Randomized training positions (`data.random_positions_max`, Ruoss et al. 2023): each training
document's positions are a sorted random subset of [0, L), reproducible from the seed and the
row; evaluation keeps 0, 1, ...; bad values fail at validation."""

import collections
import dataclasses
import json
import logging
import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from nopejax import data, experiment
from nopejax.data import examples, pipeline
from nopejax.data import positions as positions_lib
from nopejax.eval import runner
from nopejax.train import loop

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import tiny  # noqa: E402

L_MAX = 500


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  """Packed rows of copy and addition documents (several per row), randomized to [0, 500)."""
  c = data.default_config()
  c.data_dir = str(tmp_path_factory.mktemp("data"))
  c.tasks = "copy,addition"
  c.train_length, c.test_length = 4, 6
  c.num_train, c.num_test = 48, 8
  c.seq_len, c.batch_size = 40, 4
  c.random_positions_max = L_MAX
  return data.resolve(c, 128)


def take(it, n):
  return [next(it) for _ in range(n)]


def train_batches(cfg, n, **kwargs):
  return take(data.train_iter(cfg, process_index=0, process_count=1, **kwargs), n)


def document_positions(batch):
  """[(row, positions of one document)] for every document of the batch, in order."""
  docs = []
  for row, seg in enumerate(batch["segment_ids"]):
    for s in np.unique(seg[seg > 0]):
      docs.append((row, batch["positions"][row][seg == s]))
  return docs


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    for key in w:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_each_document_gets_a_sorted_random_subset_of_the_range(cfg):
  batches = train_batches(cfg, 30)  # several epochs
  docs = [(b, row, p) for b, batch in enumerate(batches) for row, p in document_positions(batch)]
  for _, _, p in docs:
    assert (np.diff(p) > 0).all() and p.min() >= 0 and p.max() < L_MAX
  for batch in batches:
    assert (batch["positions"][batch["segment_ids"] == 0] == 0).all()  # padding untouched
    assert batch["positions"].dtype == np.int32
  assert sum(p[0] == 0 for _, _, p in docs) < len(docs) / 10  # rarely from 0
  assert max(p[-1] for _, _, p in docs) > L_MAX / 2  # reaching far beyond the row's 40
  # Every document its own draw: no two alike, in a row or across rows and batches.
  assert len({tuple(p) for _, _, p in docs}) == len(docs)
  assert len(docs) > 2 * len(batches) * cfg.batch_size  # packed: several documents per row


@pytest.mark.parametrize("size, high", [(2, 5), (3, 7), (6, 7)])  # (6, 7): the dense branch
def test_subsets_are_uniform(size, high):
  """Every size-subset of [0, high) comes up equally often (the draw is exact, not just spread)."""
  count = 20_000
  key_D = positions_lib._key(0, np.arange(count))
  drawn = positions_lib.sorted_subsets(key_D, np.full(count, size), high).reshape(count, size)
  assert (np.diff(drawn, axis=1) > 0).all() and drawn.min() >= 0 and drawn.max() < high
  seen = collections.Counter(map(tuple, drawn))
  expected = count / len(seen)
  assert len(seen) == math.comb(high, size)
  assert max(abs(n - expected) for n in seen.values()) < 5 * np.sqrt(expected)


def test_same_seed_same_positions_after_a_restart_a_resume_and_on_two_processes(cfg):
  expected = train_batches(cfg, 20)
  assert_batches_equal(train_batches(cfg, 20), expected)  # a second pipeline, same seed
  it = data.train_iter(cfg, process_index=0, process_count=1)
  take(it, 13)
  state = json.loads(json.dumps(it.get_state()))
  resumed = data.train_iter(cfg, process_index=0, process_count=1)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 7), expected[13:])
  halves = [take(data.train_iter(cfg, process_index=i, process_count=2), 20) for i in (0, 1)]
  joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)]
  assert_batches_equal(joined, expected)  # positions follow the global row, not the process
  other_seed = train_batches(dataclasses.replace(cfg, seed=1), 1)[0]["positions"]
  assert not np.array_equal(other_seed, expected[0]["positions"])


def test_only_the_positions_change(cfg):
  off = dataclasses.replace(cfg, random_positions_max=0)
  for on_batch, off_batch in zip(train_batches(cfg, 12), train_batches(off, 12)):
    for key in ("inputs", "targets", "segment_ids", "loss_mask"):
      np.testing.assert_array_equal(on_batch[key], off_batch[key], err_msg=key)
    assert not np.array_equal(on_batch["positions"], off_batch["positions"])
    # The same documents, each of the same length, which the option only renumbers.
    for (_, on), (_, real) in zip(document_positions(on_batch), document_positions(off_batch)):
      np.testing.assert_array_equal(real, np.arange(len(on)))


def refuse(*args, **kwargs):
  raise AssertionError("evaluation must not randomize positions")


def test_evaluation_keeps_the_real_positions(cfg, monkeypatch):
  monkeypatch.setattr(positions_lib, "randomize", refuse)
  off = dataclasses.replace(cfg, random_positions_max=0)
  for split in ("validation", "test_6"):
    batches = list(pipeline.EvalBatches(cfg, split, process_index=0, process_count=1))
    real = pipeline.EvalBatches(off, split, process_index=0, process_count=1)
    assert_batches_equal(batches, list(real))
    for batch in batches:
      for _, p in document_positions(batch):
        np.testing.assert_array_equal(p, np.arange(len(p)))
  # The evaluation kinds read whole examples, which carry no positions.
  assert examples.task_examples(cfg, "copy", "test_6") == examples.task_examples(
    off, "copy", "test_6"
  )


def test_a_rope_model_trains_on_random_positions_and_evaluates_on_real_ones(tmp_path, monkeypatch):
  cfg = tiny.get_config("positions=rope,steps=4")
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.num_train, cfg.data.test_length = 200, 3
  cfg.data.random_positions_max = 256
  cfg.train.log_every, cfg.train.eval_every, cfg.train.checkpoint_every = 2, 2, 4
  cfg.eval.max_examples = 4
  exp = experiment.resolve(cfg)
  seen = []

  def spy(batch, high, **kwargs):
    out = randomize(batch, high, **kwargs)
    seen.append(int(out.max()))
    return out

  randomize = positions_lib.randomize
  monkeypatch.setattr(positions_lib, "randomize", spy)
  params = loop.run(exp, str(tmp_path / "run"))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
  assert len(seen) >= 4 and max(seen) >= cfg.data.seq_len  # the steps saw randomized positions

  monkeypatch.setattr(positions_lib, "randomize", refuse)  # tasks, generation, lm, passkey
  results = runner.evaluate(exp, params)
  assert set(results["copy"]) == {1, 2, 3}


@pytest.mark.parametrize(
  "value, message",
  [
    (39, r"data.random_positions_max: expected 0 \(off\) or an integer in \[data.seq_len=40, "),
    (-5, r"data.random_positions_max: .*, got -5$"),
    (True, r"data.random_positions_max: .*, got True$"),
    (2**31, r"data.random_positions_max: .*, got 2147483648$"),
  ],
)
def test_bad_values_are_one_line_errors_naming_the_key(cfg, value, message):
  group = dict(dataclasses.asdict(cfg), random_positions_max=value)
  with pytest.raises(ValueError, match="^" + message) as e:
    data.resolve(group, 128)
  assert "\n" not in str(e.value)


def tiny_experiment(tmp_path, **model):
  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.random_positions_max = 4096
  cfg.model.update(model)
  return cfg


def test_learned_positions_must_cover_the_range(tmp_path):
  cfg = tiny_experiment(tmp_path, input_positions="learned", max_len=2048)
  with pytest.raises(
    ValueError,
    match=r"^data.random_positions_max=4096 needs 4096 positions but the learned input "
    r"positions cover model.max_len=2048$",
  ):
    experiment.resolve(cfg)
  cfg.model.max_len = 4096
  assert experiment.resolve(cfg).data.random_positions_max == 4096


def test_a_nope_only_model_accepts_the_option_and_says_it_is_a_no_op(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  experiment.resolve(tiny_experiment(tmp_path, positions="nope"))
  assert any("a no-op, the model reads no positions" in r.getMessage() for r in caplog.records)
  caplog.clear()
  experiment.resolve(tiny_experiment(tmp_path, positions="rope,nope"))
  assert not any("a no-op" in r.getMessage() for r in caplog.records)
