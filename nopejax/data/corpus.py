"""Text corpora: files read by extension, tokenized once into a cache of documents.

`data.corpus` is `stdlib` (this Python's standard-library sources), a directory, a glob, or a
comma-separated list of them. Files are read by extension:

  .jsonl .jsonl.gz .jsonl.zst   one document per line, the string field `data.text_field`
  .parquet                      one document per row, the string column `data.text_field`
  .array_record                 one pre-tokenized document per record: little-endian int32 ids,
                                without bos/eos (nopejax adds them)
  anything else (.txt .md .py)  one document per file; binary files (a NUL byte) are skipped

A document goes to 'validation' for a stable `data.val_fraction` of hashes of its name (the
file's path relative to its corpus root, plus `:N` for the N-th document of a multi-document
file), else to 'train'. The corpus is tokenized once per (files with their sizes and mtimes,
text field, split fraction, tokenizer) into `data_dir/corpus/<key>/`: one shard per file, each
a pair of document stores (nopejax.data.documents) written as a stream, in `data.num_workers`
worker processes with a progress bar. A shard is complete once its stores are, so an interrupted
tokenization resumes with the shards it had not finished, and memory never holds more than a
batch of documents. Rows are cut from documents when read, so `seq_len` is not part of the key.
"""

import concurrent.futures
import fnmatch
import glob
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil

import numpy as np

from nopejax import specs, storage
from nopejax.data import documents

JSONL = (".jsonl", ".jsonl.gz", ".jsonl.zst")
STRUCTURED = (*JSONL, ".parquet", ".array_record")
_BATCH = 256  # documents tokenized per call


def _expand(part: str) -> tuple[str, list[str]]:
  """(root, files) of one corpus part: 'stdlib', a directory, a file or a glob."""
  part = os.path.expanduser(part.strip())
  if part == "stdlib":
    root = os.path.dirname(os.__file__)
    # site-packages may be the running venv's; the corpus must not depend on it.
    files = [
      f
      for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
      if not fnmatch.fnmatch(f, "*-packages*")
    ]
  elif os.path.isdir(part):
    root, files = part, glob.glob(os.path.join(part, "**", "*"), recursive=True)
  else:
    files = glob.glob(part, recursive=True)
    root = os.path.commonpath(files) if files else part
    root = root if os.path.isdir(root) else os.path.dirname(root)
  files = [f for f in files if os.path.isfile(f)]
  return os.path.abspath(root), sorted(os.path.abspath(f) for f in files)


def files(corpus: str) -> list[tuple[str, str]]:
  """(root, path) of every file of `corpus` (parts separated by commas), binary text skipped."""
  out = []
  for part in corpus.split(","):
    if part.strip():
      root, paths = _expand(part)
      out += [(root, p) for p in paths if p.endswith(STRUCTURED) or not _is_binary(p)]
  return out


def _is_binary(path: str) -> bool:
  with open(path, "rb") as f:
    return b"\0" in f.read(1024)


def split_of(name: str, val_fraction: float) -> str:
  """'validation' for a stable `val_fraction` of document names, chosen by hash."""
  digest = hashlib.sha256(name.encode()).digest()
  return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def fingerprint(entries: list[tuple[str, str]]) -> list:
  """Changes when any file is added, removed or modified."""
  return [(os.path.relpath(p, r), os.stat(p).st_size, os.stat(p).st_mtime_ns) for r, p in entries]


# ---------------------------------------------------------------- reading


def _open_text(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  if path.endswith(".zst"):
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return io.TextIOWrapper(raw, encoding="utf-8")
  return open(path, encoding="utf-8")


def _jsonl(path: str, field: str):
  with _open_text(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"data.corpus: {path} line {number} is not valid JSON ({e.msg})") from None
      text = record.get(field) if isinstance(record, dict) else None
      if not isinstance(text, str):
        raise ValueError(f"data.text_field: {path} line {number} has no string field {field!r}")
      yield text


def _parquet(path: str, field: str):
  import pyarrow.parquet as pq

  try:
    table = pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a broken file
    raise ValueError(
      f"data.corpus: {path} is not a readable Parquet file ({str(e).splitlines()[0]})"
    ) from None
  columns = table.schema_arrow.names
  if field not in columns:
    raise ValueError(
      f"data.text_field: {path} has no column {field!r} (columns: {', '.join(columns)})"
    )
  for batch in table.iter_batches(batch_size=_BATCH, columns=[field]):
    yield from (t if t is not None else "" for t in batch.column(0).to_pylist())


def _array_record(path: str):
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(path)
  try:
    for first in range(0, reader.num_records(), _BATCH):
      last = min(first + _BATCH, reader.num_records())
      for record in reader.read(list(range(first, last))):
        yield np.frombuffer(record, "<i4")
  finally:
    reader.close()


def read(path: str, field: str):
  """The documents of one file: strings, or int32 id arrays for .array_record."""
  if path.endswith(JSONL):
    return _jsonl(path, field)
  if path.endswith(".parquet"):
    return _parquet(path, field)
  if path.endswith(".array_record"):
    return _array_record(path)
  with open(path, encoding="utf-8", errors="replace") as f:
    return iter([f.read()])


def texts(corpus: str, field: str, split: str, val_fraction: float):
  """Every text document of `split` (for training a tokenizer), in file order."""
  for root, path in files(corpus):
    if path.endswith(".array_record"):
      continue
    for name, doc in _named(root, path, field):
      if split_of(name, val_fraction) == split:
        yield doc


def _named(root: str, path: str, field: str):
  rel = os.path.relpath(path, root)
  if not path.endswith(STRUCTURED):
    yield from ((rel, doc) for doc in read(path, field))
    return
  yield from ((f"{rel}:{i}", doc) for i, doc in enumerate(read(path, field)))


# ---------------------------------------------------------------- tokenizing


def _encode(tok, batch: list) -> list[np.ndarray]:
  if all(isinstance(d, np.ndarray) for d in batch):
    return batch
  return [np.asarray(ids, np.int64) for ids in tok.encode_batch(batch)]


def _tokenize_file(job) -> int:
  """Worker: one file into its shard (a store per split); returns the file's size in bytes."""
  root, path, shard_dir, data_cfg = job
  if all(documents.is_complete(os.path.join(shard_dir, s)) for s in ("train", "validation")):
    return os.path.getsize(path)
  from nopejax.data import tokenizers  # workers build their own (SentencePiece: trained once)
  from nopejax.data.sources import builder

  tok = tokenizers.get_tokenizer(data_cfg)
  dtype = builder.token_dtype(tok.vocab_size)
  partial = f"{shard_dir}.partial"
  writers = {s: documents.Writer(os.path.join(partial, s), dtype) for s in ("train", "validation")}
  count, batch = 0, []

  def flush():
    for (name, _), ids in zip(batch, _encode(tok, [d for _, d in batch])):
      if len(ids) and ids.max(initial=0) >= tok.vocab_size:
        raise ValueError(
          f"data.corpus: {path} holds token id {int(ids.max())}, beyond the tokenizer's "
          f"vocabulary of {tok.vocab_size}"
        )
      if len(ids):
        doc = np.concatenate([[tok.bos_id], ids, [tok.eos_id]])
        writers[split_of(name, data_cfg.val_fraction)].add(doc)
    batch.clear()

  for item in _named(root, path, data_cfg.text_field):
    batch.append(item)
    count += 1
    if len(batch) == _BATCH:
      flush()
  flush()
  if count == 0 and path.endswith(STRUCTURED):
    raise ValueError(f"data.corpus: {path} is empty (no documents)")
  for w in writers.values():
    w.close()
  shutil.rmtree(shard_dir, ignore_errors=True)
  os.rename(partial, shard_dir)
  return os.path.getsize(path)


def _progress():
  from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

  return Progress(
    TextColumn("tokenizing corpus"),
    BarColumn(),
    DownloadColumn(),
    TimeRemainingColumn(),
    transient=True,
  )


def build(local, data_cfg, entries) -> None:
  """Tokenizes every file of `entries` not already done into `local/shards/`, then writes
  `local/shards.json` (the completion marker)."""
  local = os.fspath(local)
  if os.path.exists(os.path.join(local, "shards.json")):
    return
  jobs = [
    (root, path, os.path.join(local, "shards", f"{i:06d}"), data_cfg)
    for i, (root, path) in enumerate(entries)
  ]
  total = sum(os.path.getsize(p) for _, p in entries)
  with _progress() as bar:
    task = bar.add_task("corpus", total=total)
    if data_cfg.num_workers:
      context = multiprocessing.get_context("spawn")  # no fork of a process running XLA threads
      with concurrent.futures.ProcessPoolExecutor(data_cfg.num_workers, mp_context=context) as pool:
        for size in pool.map(_tokenize_file, jobs):
          bar.advance(task, size)
    else:
      for job in jobs:
        bar.advance(task, _tokenize_file(job))
  storage.write_json(os.path.join(local, "shards.json"), [os.path.basename(j[2]) for j in jobs])


def cache(data_cfg, tok, corpus: str | None = None) -> str:
  """The local cache directory of `corpus` (default data.corpus), tokenized on first use."""
  from nopejax.data.sources import builder  # builder reads the corpus's tokenizers

  entries = files(corpus or data_cfg.corpus)
  key = hashlib.sha256(
    json.dumps(
      [fingerprint(entries), data_cfg.text_field, data_cfg.val_fraction, tok.name]
    ).encode()
  ).hexdigest()[:12]
  local = storage.synced_dir(
    builder.data_dir(data_cfg), f"corpus/{key}", lambda d: build(d, data_cfg, entries)
  )
  return os.fspath(local)


def corpus_documents(data_cfg, tok, split: str, corpus: str | None = None) -> documents.Documents:
  """The documents of `split` of `corpus` (default data.corpus), tokenized on first use."""
  local = cache(data_cfg, tok, corpus)
  shards = storage.read_json(storage.path(local) / "shards.json")
  return documents.concatenate(
    [documents.load(os.path.join(local, "shards", s, split)) for s in shards]
  )


# ---------------------------------------------------------------- mixtures and validation


def mixture(spec: str) -> list[tuple[str, float]]:
  """`GLOB:WEIGHT,GLOB:WEIGHT` as [(glob, weight)]; one-line errors naming data.mixture."""
  out = []
  for item in spec.split(","):
    corpus, sep, weight = item.strip().rpartition(":")
    specs.check(sep and corpus, f"data.mixture: {item.strip()!r} is not GLOB:WEIGHT")
    try:
      value = float(weight)
    except ValueError:
      value = float("nan")
    specs.check(value > 0, f"data.mixture: the weight of {corpus} must be positive, got {weight!r}")
    out.append((corpus, value))
  return out


def validate(corpus: str, key: str = "data.corpus") -> None:
  """One-line errors for a corpus that cannot be read: a bucket URL, a missing path, no files."""
  for part in (p.strip() for p in corpus.split(",") if p.strip()):
    specs.check(
      not storage.is_remote(part),
      f"{key}: {part} is a bucket URL; a corpus is read from local disk (copy it there "
      "first; data.data_dir may be a bucket)",
    )
    is_path = part != "stdlib" and not any(c in part for c in "*?[")
    specs.check(
      not is_path or os.path.exists(os.path.expanduser(part)), f"{key}: {part} does not exist"
    )
    entries = files(part)
    specs.check(entries, f"{key}: {part} holds no text files")
    for _, path in entries:
      specs.check(
        os.path.getsize(path) > 0 or not path.endswith(STRUCTURED),
        f"data.corpus: {path} is empty",
      )
    specs.check(
      any(os.path.getsize(p) > 0 for _, p in entries), f"{key}: {part} holds no text files"
    )
