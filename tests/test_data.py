"""The data layer: builders, stored documents, tokenizers, the global-order pipeline and config
validation."""

import collections
import dataclasses
import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ml_collections
import numpy as np
import pytest

from nopejax import data
from nopejax.data import corpus as corpus_lib
from nopejax.data import examples, pipeline, tasks, tokenizers
from nopejax.data import spec as data_spec
from nopejax.data.sources import builder


@pytest.fixture
def cfg(tmp_path):
  c = data.default_config()
  c.data_dir = str(tmp_path / "data")
  c.tasks = "copy,addition"
  c.train_length, c.test_length = 4, 6
  c.num_train, c.num_test = 48, 8
  c.seq_len, c.batch_size = 40, 4
  return data.resolve(c, 128)


@pytest.fixture
def corpus(tmp_path):
  root = tmp_path / "corpus"
  (root / "sub").mkdir(parents=True)
  for i in range(12):
    (root / ("sub" if i % 2 else "") / f"file{i}.py").write_text(
      f"# file {i}\n" + "x = 1\n" * (20 * i + 1)
    )
  (root / "empty.py").write_text("")
  return str(root)


def text_cfg(cfg, corpus):
  return dataclasses.replace(cfg, kind="text", corpus=corpus, val_fraction=0.25)


def as_group(spec) -> ml_collections.ConfigDict:
  """A DataSpec back as a `data` config group, to validate (resolve returns a spec as is)."""
  return ml_collections.ConfigDict(dataclasses.asdict(spec))


def documents(batch) -> list[tuple[int, ...]]:
  """Each packed document of a batch as bos + tokens, rebuilt from inputs/targets."""
  docs = []
  for row in range(len(batch["inputs"])):
    seg = batch["segment_ids"][row]
    for s in np.unique(seg[seg > 0]):
      at = seg == s
      docs.append(tuple(batch["inputs"][row][at]) + (batch["targets"][row][at][-1],))
  return docs


def all_docs(c, task, split):
  return [tuple(e["prompt"] + e["answer"]) for e in data.task_examples(c, task, split)]


# ---------------------------------------------------------------- builders


def test_same_seed_same_examples_other_seed_other_examples(cfg, tmp_path):
  first = data.task_examples(cfg, "addition", "train")
  # Regenerated, not read back.
  cfg = dataclasses.replace(cfg, data_dir=str(tmp_path / "elsewhere"))
  assert data.task_examples(cfg, "addition", "train") == first
  cfg = dataclasses.replace(cfg, seed=1)
  assert data.task_examples(cfg, "addition", "train") != first


def test_splits_have_the_configured_lengths_and_sizes(cfg):
  assert data.test_lengths(cfg, "copy") == [1, 2, 3, 4, 5, 6]
  train = data.task_examples(cfg, "copy", "train")
  assert len(train) == 48 and {e["length"] for e in train} == {1, 2, 3, 4}
  for n in data.test_lengths(cfg, "copy"):
    test = data.task_examples(cfg, "copy", f"test_{n}")
    assert len(test) == 8 and {e["length"] for e in test} == {n}
  cfg = dataclasses.replace(cfg, train_length=None, test_length=None)  # the paper's
  assert data.test_lengths(cfg, "copy")[-1] == 40 and data.test_lengths(cfg, "sort")[-1] == 16


def test_examples_start_with_bos_end_with_eos_and_decode_to_the_text(cfg):
  tok = tokenizers.get_tokenizer(cfg)
  for e in data.task_examples(cfg, "addition", "test_3"):
    assert e["prompt"][0] == tok.bos_id and e["answer"][-1] == tok.eos_id
    assert tok.decode(e["prompt"] + e["answer"]) == e["text"]
    assert e["text"].startswith("Compute ") and tok.decode(e["answer"]).startswith("The answer is")


def test_building_twice_reuses_the_files(cfg):
  data.task_examples(cfg, "copy", "train")
  root = os.path.join(builder.data_dir(cfg), "nopejax_tasks")
  built = {d: os.stat(os.path.join(root, d)).st_mtime_ns for d in os.listdir(root)}
  data.task_examples(cfg, "copy", "train")
  assert {d: os.stat(os.path.join(root, d)).st_mtime_ns for d in os.listdir(root)} == built
  data.task_examples(dataclasses.replace(cfg, num_train=50), "copy", "train")
  assert len(os.listdir(root)) == len(built) + 1


def test_data_dir_defaults_to_env_then_cache(cfg, monkeypatch):
  cfg = dataclasses.replace(cfg, data_dir=None)
  monkeypatch.setenv("NOPEJAX_DATA_DIR", "/somewhere")
  assert builder.data_dir(cfg) == "/somewhere"
  monkeypatch.delenv("NOPEJAX_DATA_DIR")
  assert builder.data_dir(cfg) == os.path.expanduser("~/.cache/nopejax/data")


def test_passkey_examples_fit_and_hold_the_key(cfg):
  cfg = dataclasses.replace(
    cfg,
    kind="passkey",
    passkey_lengths=(500, 900),
    passkey_depths=(0.0, 1.0),
    num_train=8,
    num_test=4,
    num_passkey=3,
  )
  tok = tokenizers.get_tokenizer(cfg)
  assert tok.name == "byte"
  for length in (500, 900):
    needle_at = []
    for depth in (0.0, 1.0):
      for e in data.passkey_examples(cfg, length, depth):
        assert length - 100 < len(e["prompt"]) + len(e["answer"]) <= length
        prompt, answer = tok.decode(e["prompt"]), tok.decode(e["answer"])
        assert prompt.endswith("What is the pass key? The pass key is")
        key = answer[1:-1]
        assert answer == f" {key}." and f"The pass key is {key}. Remember it." in prompt
        needle_at.append(prompt.index("Remember it."))
    assert max(needle_at[:3]) < min(needle_at[3:])  # depth 0 before depth 1
  with pytest.raises(ValueError, match="data.passkey_depths"):
    data.passkey_examples(cfg, 500, 0.5)


def test_passkey_trains_on_its_own_lengths(cfg):
  """passkey_train_lengths: train/validation documents at most 300 tokens, tests at 500, 900."""
  cfg = dataclasses.replace(
    cfg,
    kind="passkey",
    passkey_lengths=(500, 900),
    passkey_depths=(0.0, 1.0),
    passkey_train_lengths=(300,),
    num_train=8,
    num_test=4,
    num_passkey=2,
  )
  for split, count in (("train", 8), ("validation", 4)):
    _, (source,) = pipeline.sources(cfg, split)
    records = examples._read_all(source)
    assert len(records) == count
    assert {int(r["length"]) for r in records} == {300}, split
    assert all(200 < len(r["inputs"]) + len(r["targets"]) + 2 <= 300 for r in records)
  assert all(len(e["prompt"]) > 800 for e in data.passkey_examples(cfg, 900, 1.0))
  cfg = dataclasses.replace(cfg, passkey_train_lengths=(300, 0))
  with pytest.raises(ValueError, match=r"data.passkey_train_lengths: need positive lengths"):
    data.resolve(as_group(cfg), model_vocab_size=259)


def test_text_documents_split_by_path_hash(cfg, corpus):
  cfg = text_cfg(cfg, corpus)
  expected = collections.Counter(
    corpus_lib.split_of(os.path.relpath(f, root), 0.25)
    for root, f in corpus_lib.files(corpus)
    if os.path.getsize(f)
  )
  val, train = data.text_documents(cfg, "validation"), data.text_documents(cfg, "train")
  assert (len(val), len(train)) == (expected["validation"], expected["train"])
  tok = tokenizers.get_tokenizer(cfg)
  assert all(d[0] == tok.bos_id and d[-1] == tok.eos_id and d.dtype == np.int32 for d in val)
  assert all(tok.decode(d).startswith("# file ") for d in val + train)


# ---------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_with_specials_below_bytes():
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode("héllo ✓")
  assert min(ids) >= 3 and max(ids) < tok.vocab_size == 259
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == "héllo ✓"


def test_hf_tokenizer_from_a_local_file(cfg, tmp_path):
  hf = pytest.importorskip("tokenizers")
  words = ["<pad>", "<s>", "</s>", "<unk>", "hello", "world"]
  model = hf.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
  tok_json = hf.Tokenizer(model)
  tok_json.pre_tokenizer = hf.pre_tokenizers.Whitespace()
  tok_json.add_special_tokens(["<pad>", "<s>", "</s>"])
  tok_json.save(str(tmp_path / "tokenizer.json"))
  cfg = dataclasses.replace(cfg, kind="passkey", tokenizer=f"hf:{tmp_path}/tokenizer.json")
  tok = tokenizers.get_tokenizer(cfg)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 6)
  assert tok.encode("hello world") == [4, 5] and tok.decode([1, 4, 5, 2]) == "hello world"
  assert data.vocab_size(cfg) == 6


def test_sentencepiece_trained_on_the_corpus_feeds_the_pipeline(cfg, corpus):
  cfg = dataclasses.replace(text_cfg(cfg, corpus), tokenizer="sentencepiece", vocab_size_sp=300)
  assert data.vocab_size(cfg) == 300
  tok = tokenizers.get_tokenizer(cfg)
  assert tok.vocab_size <= 300 and tok.decode(tok.encode("x = 1\n")) == "x = 1\n"
  batch = next(data.train_iter(cfg, process_index=0, process_count=1))
  assert batch["inputs"].max() < 300 and batch["segment_ids"].max() >= 1


# ---------------------------------------------------------------- pipeline


def check_batch(batch, c, *, whole_documents=True, loss_on_all=False):
  rows, seq_len = c.batch_size, c.seq_len
  for key, dtype in [
    ("inputs", np.int32),
    ("targets", np.int32),
    ("segment_ids", np.int32),
    ("positions", np.int32),
    ("loss_mask", np.float32),
  ]:
    assert batch[key].shape == (rows, seq_len) and batch[key].dtype == dtype, key
  seg, pos = batch["segment_ids"], batch["positions"]
  for row in range(rows):
    for s in np.unique(seg[row][seg[row] > 0]):
      at = np.flatnonzero(seg[row] == s)
      assert (at == np.arange(at[0], at[0] + len(at))).all()  # contiguous
      assert (pos[row][at] == np.arange(len(at))).all()  # positions restart
      # Within a document, each target is the next input: never another document's token.
      assert (batch["targets"][row][at[:-1]] == batch["inputs"][row][at[1:]]).all()
      if whole_documents:
        assert batch["targets"][row][at[-1]] == 2  # the document's own eos (task/byte ids)
  assert (batch["loss_mask"][seg == 0] == 0).all()
  if loss_on_all:
    assert (batch["loss_mask"] == (seg > 0)).all()


@pytest.mark.parametrize("pack", [True, False])
def test_one_pass_keeps_every_document_whole(cfg, pack):
  cfg = dataclasses.replace(cfg, pack=pack)
  batches = list(data.eval_iter(cfg, "train", process_index=0, process_count=1))
  for batch in batches:
    check_batch(batch, cfg)
  got = collections.Counter(d for b in batches for d in documents(b))
  assert got == collections.Counter(
    all_docs(cfg, "copy", "train") + all_docs(cfg, "addition", "train")
  )
  if pack:
    assert len(batches) < 96 / cfg.batch_size  # packing put several documents in a row


def test_loss_mask_covers_exactly_the_answer(cfg):
  batch = next(data.train_iter(cfg, process_index=0, process_count=1))
  check_batch(batch, cfg)
  answers = {
    tuple(e["prompt"]): tuple(e["answer"])
    for task in ("copy", "addition")
    for e in data.task_examples(cfg, task, "train")
  }
  for row in range(cfg.batch_size):
    seg = batch["segment_ids"][row]
    for s in np.unique(seg[seg > 0]):
      at = seg == s
      doc = tuple(batch["inputs"][row][at]) + (batch["targets"][row][at][-1],)
      trained = tuple(batch["targets"][row][at][batch["loss_mask"][row][at] == 1])
      assert trained == answers[doc[: len(doc) - len(trained)]]


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    for key in w:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_train_iter_resumes_from_a_json_state(cfg):
  it = data.train_iter(cfg, process_index=0, process_count=1)
  take(it, 30)  # several epochs of 96 documents
  state = json.loads(json.dumps(it.get_state()))
  assert state["epoch"] > 1
  expected = take(it, 5)
  resumed = data.train_iter(cfg, process_index=0, process_count=1)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 5), expected)


def test_train_iter_is_deterministic_and_reshuffles_each_epoch(cfg):
  # One batch is one epoch.
  cfg = dataclasses.replace(cfg, pack=False, tasks="copy", num_train=48, batch_size=48)

  def epochs(c):
    it = data.train_iter(c, process_index=0, process_count=1)
    return [documents(next(it)) for _ in range(2)]

  first, second = epochs(cfg)
  assert [first, second] == epochs(cfg)
  assert first != second and sorted(first) == sorted(second)


@pytest.mark.parametrize("pack", [True, False])
def test_one_two_or_four_processes_make_the_same_global_batches(cfg, pack):
  """Process p of n holds rows p/n..(p+1)/n of every global batch, across epochs; the state is
  the same global position on every process."""
  cfg = dataclasses.replace(cfg, pack=pack, batch_size=8)
  whole = take(data.train_iter(cfg, process_index=0, process_count=1), 40)
  for count in (2, 4):
    its = [data.train_iter(cfg, process_index=i, process_count=count) for i in range(count)]
    parts = [take(it, 40) for it in its]
    assert parts[0][0]["inputs"].shape == (8 // count, cfg.seq_len)
    joined = [{k: np.concatenate([p[b][k] for p in parts]) for k in whole[b]} for b in range(40)]
    assert_batches_equal(joined, whole)
    assert len({json.dumps(it.get_state()) for it in its}) == 1


def test_a_position_saved_on_two_processes_resumes_on_one(cfg):
  cfg = dataclasses.replace(cfg, batch_size=8)
  two = [data.train_iter(cfg, process_index=i, process_count=2) for i in (0, 1)]
  for it in two:
    take(it, 17)
  state = json.loads(json.dumps(two[0].get_state()))
  expected = [
    {k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(take(two[0], 6), take(two[1], 6))
  ]
  one = data.train_iter(cfg, process_index=0, process_count=1)
  one.set_state(state)
  assert_batches_equal(take(one, 6), expected)
  one.seek(17)  # a 0.1 checkpoint's position, recomputed from the step
  assert_batches_equal(take(one, 6), expected)


def test_prefetch_hands_out_batches_in_order_with_the_consumers_position(cfg):
  plain = data.train_iter(cfg, process_index=0, process_count=1)
  ahead = pipeline.Prefetch(data.train_iter(cfg, process_index=0, process_count=1), depth=3)
  for _ in range(7):
    assert_batches_equal([next(ahead)], [next(plain)])
    assert ahead.get_state() == plain.get_state()  # not the producer's, which is ahead
  ahead.close()

  class Failing:
    def get_state(self):
      return {}

    def __next__(self):
      raise ValueError("data.corpus: broken")

  with pytest.raises(ValueError, match="data.corpus: broken"):
    next(pipeline.Prefetch(Failing()))


def test_documents_are_stored_once_and_an_unreadable_store_is_one_line(cfg):
  batch = next(data.train_iter(cfg, process_index=0, process_count=1))
  stores = sorted(
    r for r, _, names in os.walk(os.path.join(cfg.data_dir, "documents")) if "tokens.bin" in names
  )
  assert [os.path.basename(s) for s in stores] == ["train", "train"]  # copy and addition
  stamp = [os.path.getmtime(os.path.join(s, "tokens.bin")) for s in stores]
  assert_batches_equal([next(data.train_iter(cfg, process_index=0, process_count=1))], [batch])
  assert stamp == [os.path.getmtime(os.path.join(s, "tokens.bin")) for s in stores]
  with open(os.path.join(stores[0], "starts.npy"), "wb") as f:
    f.write(b"not numpy")
  with pytest.raises(ValueError, match=r"^data.data_dir: the document cache .* is unreadable") as e:
    data.train_iter(cfg, process_index=0, process_count=1)
  assert "\n" not in str(e.value)


def test_too_few_rows_for_a_batch_is_one_line(cfg):
  cfg = dataclasses.replace(cfg, tasks="copy", num_train=3, batch_size=64)
  with pytest.raises(ValueError, match=r"^data.batch_size: the train split packs into \d+ rows"):
    data.train_iter(cfg, process_index=0, process_count=1)


def test_eval_iter_gives_each_process_its_rows_of_the_same_batches(cfg):
  cfg = dataclasses.replace(cfg, batch_size=8)
  whole = list(data.eval_iter(cfg, "test_6", process_index=0, process_count=1))
  halves = [list(data.eval_iter(cfg, "test_6", process_index=i, process_count=2)) for i in (0, 1)]
  assert len(halves[0]) == len(halves[1]) == len(whole)
  for w, h0, h1 in zip(whole, *halves):
    for key in w:
      np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), w[key])
  # Both tasks have a test_6 split of 8 documents.
  assert sum(len(documents(b)) for b in whole) == 16


def test_text_rows_chunk_long_files_and_train_on_every_token(cfg, corpus):
  cfg = dataclasses.replace(text_cfg(cfg, corpus), seq_len=16)
  batches = list(data.eval_iter(cfg, "train", process_index=0, process_count=1))
  for batch in batches:
    check_batch(batch, cfg, whole_documents=False, loss_on_all=True)
  tokens = sum(len(d) - 1 for d in data.text_documents(cfg, "train"))
  assert sum(b["loss_mask"].sum() for b in batches) == tokens
  check_batch(
    next(data.train_iter(cfg, process_index=0, process_count=1)),
    cfg,
    whole_documents=False,
    loss_on_all=True,
  )


def test_overflow_errors_or_truncates(cfg):
  cfg = dataclasses.replace(cfg, seq_len=12)
  with pytest.raises(ValueError, match=r"^data.seq_len: a document of \d+ tokens"):
    next(data.train_iter(cfg, process_index=0, process_count=1))
  cfg = dataclasses.replace(cfg, overflow="truncate")
  check_batch(
    next(data.train_iter(cfg, process_index=0, process_count=1)), cfg, whole_documents=False
  )


# ---------------------------------------------------------------- validation


def test_default_config_validates_and_every_field_is_commented():
  c = data.default_config()
  data.resolve(c, 128)
  source = open(data_spec.__file__).read()
  for key in c:
    assert f"c.{key} = " in source and "#" in source.split(f"c.{key} = ")[1].split("\n")[0], key


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(tasks="copy,foo"), "data.tasks: unknown task 'foo'; known: addition, copy"),
    (dict(kind="images"), "data.kind: unknown kind 'images'"),
    (dict(tokenizer="wordpiece"), "data.tokenizer: unknown tokenizer 'wordpiece'"),
    (
      dict(tokenizer="hf:/no/such/tokenizer.json"),
      "data.tokenizer: /no/such/tokenizer.json does not exist",
    ),
    (dict(overflow="wrap"), "data.overflow: unknown value 'wrap'"),
    (dict(batch_size=0), "data.batch_size: expected a positive integer"),
    (dict(seq_len=-1), "data.seq_len: expected a positive integer"),
    (dict(kind="text", corpus="/no/such/dir"), "data.corpus: /no/such/dir does not exist"),
    (dict(kind="text", corpus="EMPTY"), "data.corpus: .* holds no text files"),
    (dict(kind="text", tokenizer="task"), "data.tokenizer: 'task' only encodes task words"),
    (dict(kind="text"), "model.vocab_size: data.tokenizer='auto' needs at least 259, got 100"),
  ],
)
def test_validate_names_the_bad_key_in_one_line(changes, message, tmp_path):
  c = data.default_config()
  if changes.get("corpus") == "EMPTY":
    changes["corpus"] = str(tmp_path)
  c.update(changes)
  with pytest.raises(ValueError, match=message) as e:
    data.resolve(c, 100)
  assert "\n" not in str(e.value)


def test_batch_size_must_divide_across_processes(cfg):
  cfg = dataclasses.replace(cfg, batch_size=6)
  with pytest.raises(
    ValueError, match="^data.batch_size: 6 does not divide evenly across 4 processes"
  ):
    data.train_iter(cfg, process_index=0, process_count=4)


def test_known_tasks_and_vocab_size(cfg):
  assert {"copy", "reverse", "addition", "parity", "sort", "summation"} <= set(tasks.TASKS)
  assert data.vocab_size(cfg) == tokenizers.TaskTokenizer().vocab_size < 128
  assert data.vocab_size(dataclasses.replace(cfg, tokenizer="byte")) == 259


def test_bench_data_command_prints_throughput(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "nopejax.bench_data",
      "--config=configs/tiny.py",
      "--batches=3",
      "--step",
      "--steps=2",
      f"--config.data.data_dir={tmp_path}",
    ],
    cwd=root,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["batches"] == 3 and report["examples_per_s"] > 0 and report["tokens_per_s"] > 0
  assert 0 < report["fill"] <= 1 and report["cores"] == 1 and report["cpu"]
  assert report["step_tokens_per_s"] > 0
  assert report["pipeline_over_step"] == pytest.approx(
    report["slots_per_s"] / report["step_tokens_per_s"], rel=0.01
  )
