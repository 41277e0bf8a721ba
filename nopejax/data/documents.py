"""Documents stored once as flat token arrays: what a training step indexes into.

A stored set of documents is a directory of `tokens.bin` (every document's ids end to end, raw,
uint16 when the vocabulary fits; the dtype is in `meta.json`) and, per document, `starts.npy`,
`lengths.npy` (int64) and `prompt_len.npy` (int32). Document d is
`tokens[starts[d] : starts[d] + lengths[d]]` with its bos and eos; for a task or passkey
example its first `prompt_len[d] + 1` tokens are the bos and the prompt, and the loss is on the
rest. `tokens.bin` is written as a stream and memory-mapped when read, so neither writing nor
reading a store holds it in memory, and a batch is a gather, never a decode.

Task and passkey splits are written once from their TFDS sources (which stay the one place
examples are generated, and what evaluation reads whole examples from); corpora are written by
nopejax.data.corpus, one store per shard.
"""

import array
import dataclasses
import json
import os
import shutil

import numpy as np

from nopejax import storage
from nopejax.data.sources import builder

_READ_CHUNK = 1024  # records decoded at a time while a TFDS split is written


class ConcatTokens:
  """Several token arrays read as one (for gathers), without copying them together."""

  def __init__(self, parts):
    self.parts = list(parts)
    self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
    self.dtype = self.parts[0].dtype

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, index):
    index = np.asarray(index, np.int64)
    part = np.searchsorted(self.offsets, index, side="right") - 1
    out = np.empty(index.shape, self.dtype)
    for p in np.unique(part):
      at = part == p
      out[at] = self.parts[p][index[at] - self.offsets[p]]
    return out


@dataclasses.dataclass(frozen=True)
class Documents:
  """Documents as flat arrays (see the module docstring); `tokens` may be memory-mapped."""

  tokens: np.ndarray
  starts: np.ndarray
  lengths: np.ndarray
  prompt_len: np.ndarray

  def __len__(self):
    return len(self.starts)

  def document(self, d: int) -> np.ndarray:
    start = int(self.starts[d])
    return np.asarray(self.tokens[np.arange(start, start + int(self.lengths[d]))])

  def windows(self, seq_len: int) -> "Documents":
    """Each document cut into windows of at most `seq_len + 1` tokens that overlap by one, so
    every token but a document's first is a target exactly once (how text files train)."""
    per_doc = np.maximum(1, -(-(self.lengths - 1) // seq_len))
    doc = np.repeat(np.arange(len(self)), per_doc)
    k = np.arange(len(doc)) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
    starts = self.starts[doc] + k * seq_len
    lengths = np.minimum(seq_len + 1, self.lengths[doc] - k * seq_len)
    return Documents(self.tokens, starts, lengths, np.zeros(len(doc), np.int32))


def concatenate(parts: list[Documents]) -> Documents:
  """Several sets of documents as one, in the given order; the tokens are not copied."""
  parts = [p for p in parts if len(p)] or parts[:1]
  if len(parts) == 1:
    return parts[0]
  offsets = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
  return Documents(
    ConcatTokens(p.tokens for p in parts),
    np.concatenate([p.starts + o for p, o in zip(parts, offsets)]),
    np.concatenate([p.lengths for p in parts]),
    np.concatenate([p.prompt_len for p in parts]),
  )


class Writer:
  """Streams documents into a store directory; `close()` writes the index files last, so a
  directory with `prompt_len.npy` is complete."""

  def __init__(self, directory, dtype):
    self.directory, self.dtype = os.fspath(directory), np.dtype(dtype)
    os.makedirs(self.directory, exist_ok=True)
    self._tokens = open(os.path.join(self.directory, "tokens.bin"), "wb")
    self._lengths, self._prompt_len = array.array("q"), array.array("i")

  def add(self, doc: np.ndarray, prompt_len: int = 0) -> None:
    self._tokens.write(np.asarray(doc, self.dtype).tobytes())
    self._lengths.append(len(doc))
    self._prompt_len.append(prompt_len)

  def close(self) -> None:
    self._tokens.close()
    lengths = np.frombuffer(self._lengths, np.int64) if self._lengths else np.zeros(0, np.int64)
    storage.write_json(os.path.join(self.directory, "meta.json"), {"dtype": self.dtype.name})
    np.save(os.path.join(self.directory, "starts.npy"), np.cumsum(lengths) - lengths)
    np.save(os.path.join(self.directory, "lengths.npy"), lengths)
    np.save(os.path.join(self.directory, "prompt_len.npy"), np.asarray(self._prompt_len, np.int32))


def is_complete(directory) -> bool:
  return os.path.exists(os.path.join(os.fspath(directory), "prompt_len.npy"))


def load(directory) -> Documents:
  """The stored documents in `directory`, tokens memory-mapped; one-line error if unreadable."""
  directory = os.fspath(directory)
  try:
    dtype = np.dtype(json.loads(open(os.path.join(directory, "meta.json")).read())["dtype"])
    tokens_path = os.path.join(directory, "tokens.bin")
    size = os.path.getsize(tokens_path)
    tokens = np.memmap(tokens_path, dtype, mode="r") if size else np.zeros(0, dtype)
    index = {n: np.load(os.path.join(directory, f"{n}.npy")) for n in ("starts", "lengths")}
    prompt_len = np.load(os.path.join(directory, "prompt_len.npy"))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(
      f"data.data_dir: the document cache {directory} is unreadable ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}); delete it to rebuild"
    ) from None
  n = len(index["starts"])
  ends = index["starts"] + index["lengths"]
  if len(index["lengths"]) != n or len(prompt_len) != n or (n and ends.max() > len(tokens)):
    raise ValueError(
      f"data.data_dir: the document cache {directory} is inconsistent; delete it to rebuild"
    )
  return Documents(tokens, index["starts"], index["lengths"], prompt_len)


def build_once(local, write) -> None:
  """Runs `write(partial_dir)` unless `local` is already complete, then moves the result into
  place, so an interrupted build leaves nothing that looks complete."""
  local = os.fspath(local)
  if is_complete(local):
    return
  partial = f"{local}.partial"
  shutil.rmtree(partial, ignore_errors=True)
  write(partial)
  shutil.rmtree(local, ignore_errors=True)
  os.makedirs(os.path.dirname(local), exist_ok=True)
  os.rename(partial, local)


def stored(data_cfg, source, split: str, tok) -> Documents:
  """The documents of `split` of the TFDS task or passkey `source`, written under
  data.data_dir on first use (once per machine, uploaded once to a bucket data_dir) and
  memory-mapped."""
  name = source.dataset_info.full_name.replace("/", "-")

  def write(directory):
    out = Writer(directory, builder.token_dtype(tok.vocab_size))
    for first in range(0, len(source), _READ_CHUNK):
      for record in source.__getitems__(range(first, min(first + _READ_CHUNK, len(source)))):
        prompt = record["inputs"]
        out.add(
          np.concatenate([[tok.bos_id], prompt, record["targets"], [tok.eos_id]]), len(prompt)
        )
    out.close()

  directory = storage.synced_dir(
    builder.data_dir(data_cfg),
    f"documents/{name}/{split}",
    lambda local: build_once(local, write),
  )
  return load(directory)
