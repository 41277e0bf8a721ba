"""Real corpora: every file type, lists and globs, mixtures, the tokenization cache (once,
resumable, in workers, memory-bounded) and one-line errors for bad input."""

import dataclasses
import gzip
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from array_record.python import array_record_module

from nopejax import data
from nopejax.data import corpus as corpus_lib
from nopejax.data import pipeline, tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTES = tokenizers.ByteTokenizer()


def docs_of(name, n):
  return [f"{name} document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(n)]


def jsonl(docs, field="text"):
  return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))


@pytest.fixture
def corpus(tmp_path):
  """A directory with one file of every kind; returns (root, {file: its documents})."""
  root = tmp_path / "corpus"
  (root / "sub").mkdir(parents=True)
  expected = {}

  def put(name, docs):
    expected[name] = docs

  (root / "a.txt").write_text("a whole text file\nwith two lines\n")
  put("a.txt", ["a whole text file\nwith two lines\n"])
  (root / "sub" / "b.md").write_text("# markdown\n")
  put("sub/b.md", ["# markdown\n"])
  (root / "c.jsonl").write_text(jsonl(docs_of("plain", 30)) + "\n")  # a blank line is skipped
  put("c.jsonl", docs_of("plain", 30))
  with gzip.open(root / "d.jsonl.gz", "wt") as f:
    f.write(jsonl(docs_of("gzip", 20)))
  put("d.jsonl.gz", docs_of("gzip", 20))
  (root / "e.jsonl.zst").write_bytes(
    zstandard.ZstdCompressor().compress(jsonl(docs_of("zstd", 20)).encode())
  )
  put("e.jsonl.zst", docs_of("zstd", 20))
  pq.write_table(
    pa.table({"text": docs_of("parquet", 40), "n": list(range(40))}), root / "f.parquet"
  )
  put("f.parquet", docs_of("parquet", 40))
  writer = array_record_module.ArrayRecordWriter(str(root / "g.array_record"), "group_size:1")
  for d in docs_of("tokenized", 10):
    writer.write(np.asarray(BYTES.encode(d), "<i4").tobytes())
  writer.close()
  put("g.array_record", docs_of("tokenized", 10))
  (root / "binary.bin").write_bytes(b"\0\1\2")  # skipped: not text
  return str(root), expected


def text_cfg(tmp_path, corpus, **changes):
  c = data.default_config()
  settings = dict(kind="text", data_dir=str(tmp_path / "data"), val_fraction=0.2, seq_len=64)
  c.update({**settings, "corpus": corpus, "batch_size": 4, **changes})
  return data.resolve(c, 512)


def decoded(cfg, split):
  return sorted(BYTES.decode(d) for d in data.text_documents(cfg, split))


def test_every_file_type_is_read_and_split_by_document(tmp_path, corpus):
  root, expected = corpus
  cfg = text_cfg(tmp_path, root)
  every = sorted(d for docs in expected.values() for d in docs)
  train, val = decoded(cfg, "train"), decoded(cfg, "validation")
  assert sorted(train + val) == every
  assert 0 < len(val) < len(train)  # a document-level split, also inside one .jsonl file
  want_val = sorted(
    d
    for name, docs in expected.items()
    for i, d in enumerate(docs)
    if corpus_lib.split_of(f"{name}:{i}" if name.endswith(corpus_lib.STRUCTURED) else name, 0.2)
    == "validation"
  )
  assert val == want_val
  # Training rows cover every train token exactly once as a target.
  batches = list(pipeline.eval_iter(cfg, "train", process_index=0, process_count=1))
  assert sum(b["loss_mask"].sum() for b in batches) == sum(len(BYTES.encode(d)) + 1 for d in train)


def test_lists_and_globs_of_corpora(tmp_path, corpus):
  root, expected = corpus
  both = text_cfg(tmp_path, f"{root}/c.jsonl,{root}/*.parquet")
  got = sorted(decoded(both, "train") + decoded(both, "validation"))
  assert got == sorted(expected["c.jsonl"] + expected["f.parquet"])


def test_the_cache_is_built_once_and_workers_build_the_same(tmp_path, corpus):
  root, _ = corpus
  cfg = text_cfg(tmp_path, root)
  first = data.text_documents(cfg, "train")
  shards = os.path.join(cfg.data_dir, "corpus")
  stamps = {
    os.path.join(r, n): os.path.getmtime(os.path.join(r, n))
    for r, _, names in os.walk(shards)
    for n in names
  }
  assert data.text_documents(cfg, "train")[0].tolist() == first[0].tolist()
  assert stamps == {p: os.path.getmtime(p) for p in stamps}  # nothing rewritten
  workers = dataclasses.replace(cfg, data_dir=str(tmp_path / "other"), num_workers=2)
  assert [d.tolist() for d in data.text_documents(workers, "train")] == [d.tolist() for d in first]


def test_an_interrupted_tokenization_resumes_with_the_files_it_had_not_finished(
  tmp_path, corpus, monkeypatch
):
  root, _ = corpus
  cfg = text_cfg(tmp_path, root)
  real = corpus_lib._named

  def dies_on_parquet(root, path, field):
    if path.endswith(".parquet"):
      raise KeyboardInterrupt
    return real(root, path, field)

  monkeypatch.setattr(corpus_lib, "_named", dies_on_parquet)
  with pytest.raises(KeyboardInterrupt):
    data.text_documents(cfg, "train")
  [cache] = os.listdir(os.path.join(cfg.data_dir, "corpus"))
  shards = os.path.join(cfg.data_dir, "corpus", cache, "shards")
  done = sorted(s for s in os.listdir(shards) if not s.endswith(".partial"))
  assert len(done) == 4  # a.txt, c, d, e (in path order); f.parquet died; g, sub/b.md not reached
  stamps = {s: os.path.getmtime(os.path.join(shards, s, "train", "tokens.bin")) for s in done}
  monkeypatch.undo()
  docs = data.text_documents(cfg, "train")
  assert stamps == {
    s: os.path.getmtime(os.path.join(shards, s, "train", "tokens.bin")) for s in done
  }
  fresh = data.text_documents(dataclasses.replace(cfg, data_dir=str(tmp_path / "fresh")), "train")
  assert [d.tolist() for d in docs] == [d.tolist() for d in fresh]


def test_a_mixture_draws_its_corpora_in_proportion(tmp_path):
  for name, n in (("big", 400), ("small", 40)):
    (tmp_path / f"{name}.jsonl").write_text(jsonl([f"{name} {i}" for i in range(n)]))
  mix = f"{tmp_path}/big.jsonl:1,{tmp_path}/small.jsonl:3"
  cfg = text_cfg(tmp_path, "stdlib", mixture=mix, val_fraction=0.0, batch_size=8, pack=False)
  it = data.train_iter(cfg, process_index=0, process_count=1)
  seen = [BYTES.decode(row[row > 0]) for b in (next(it) for _ in range(40)) for row in b["inputs"]]
  small = sum(s.lstrip("\x01").startswith("small") for s in seen) / len(seen)
  assert small == pytest.approx(0.75, abs=0.05)
  again = data.train_iter(cfg, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(again)["inputs"], next(data.train_iter(cfg))["inputs"])


@pytest.mark.parametrize(
  "name, content, message",
  [
    (
      "bad.jsonl",
      '{"text": "ok"}\n{"text": \n',
      r"data.corpus: .*bad.jsonl line 2 is not valid JSON",
    ),
    (
      "field.jsonl",
      '{"body": "no text"}\n',
      r"data.text_field: .*field.jsonl line 1 has no string",
    ),
    ("empty.jsonl", "", r"data.corpus: .*empty.jsonl is empty"),
    ("broken.parquet", "not parquet at all", r"data.corpus: .*broken.parquet is not a readable"),
    (
      "column.parquet",
      None,
      r"data.text_field: .*column.parquet has no column 'text' \(columns: body\)",
    ),
  ],
)
def test_bad_corpus_files_are_one_line_naming_the_file(tmp_path, name, content, message):
  root = tmp_path / "bad"
  root.mkdir()
  path = root / name
  if content is None:
    pq.write_table(pa.table({"body": ["x"]}), path)
  else:
    path.write_text(content)
  with pytest.raises(ValueError, match=message) as e:
    data.train_iter(text_cfg(tmp_path, str(root)), process_index=0, process_count=1)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(mixture="a.jsonl:0"), r"data.mixture: the weight of a.jsonl must be positive, got '0'"),
    (dict(mixture="a.jsonl:-1"), r"data.mixture: the weight of a.jsonl must be positive"),
    (dict(mixture="a.jsonl"), r"data.mixture: 'a.jsonl' is not GLOB:WEIGHT"),
    (dict(mixture="/no/such.jsonl:1"), r"data.mixture: /no/such.jsonl does not exist"),
    (dict(kind="tasks", mixture="x:1"), r"data.mixture: mixes text corpora"),
  ],
)
def test_bad_mixtures_are_one_line(changes, message):
  c = data.default_config()
  c.update({"kind": "text", **changes})
  with pytest.raises(ValueError, match=message) as e:
    data.resolve(c, 512)
  assert "\n" not in str(e.value)


def test_a_tokenizer_larger_than_the_model_and_out_of_range_ids_are_one_line(tmp_path, corpus):
  root, _ = corpus
  c = data.default_config()
  c.update(kind="text", corpus=root, data_dir=str(tmp_path / "data"))
  with pytest.raises(
    ValueError, match=r"^model.vocab_size: data.tokenizer='auto' needs at least 259"
  ):
    data.resolve(c, 100)
  records = tmp_path / "ids"
  records.mkdir()
  writer = array_record_module.ArrayRecordWriter(str(records / "x.array_record"), "group_size:1")
  writer.write(np.asarray([5, 70000], "<i4").tobytes())
  writer.close()
  with pytest.raises(ValueError, match=r"x.array_record holds token id 70000, beyond"):
    data.train_iter(text_cfg(tmp_path, str(records)), process_index=0, process_count=1)


def test_memory_does_not_grow_with_the_corpus(tmp_path):
  """A 384 MB corpus is tokenized by a process whose address space may grow by 96 MB only."""
  root = tmp_path / "big"
  root.mkdir()
  line = json.dumps({"text": "the quick brown fox jumps over the lazy dog " * 23}) + "\n"
  block = line * ((1 << 20) // len(line) + 1)
  for i in range(12):
    with open(root / f"part{i:02d}.jsonl", "w") as f:
      for _ in range(32):
        f.write(block)
  size = sum(p.stat().st_size for p in root.iterdir())
  assert size > 4 * 96 * 2**20
  script = textwrap.dedent(
    f"""
    import resource
    from nopejax import data
    from nopejax.data import corpus, tokenizers
    c = data.default_config()
    c.update(kind="text", corpus={str(root)!r}, data_dir={str(tmp_path / "data")!r})
    spec = data.resolve(c, 512)
    tok = tokenizers.get_tokenizer(spec)
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 96 * 2**20, resource.RLIM_INFINITY))
    corpus.cache(spec, tok)  # tokenize under the cap
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    docs = corpus.corpus_documents(spec, tok, "train")  # memory-mapped: address space, not RAM
    print(len(docs), int(docs.lengths.sum()))
    """
  )
  proc = subprocess.run(
    [sys.executable, "-c", script],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  num_docs, num_tokens = map(int, proc.stdout.split())
  assert num_tokens > 0.9 * size  # bytes + bos/eos, minus the JSON around each text
