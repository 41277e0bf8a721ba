"""Documents stored once as flat token arrays: what a training step indexes into.

A stored split is four files under `data.data_dir/documents/<source>/<split>/`:
`tokens.npy` (every document's ids end to end, uint16 when the vocabulary fits), and per
document `starts.npy`, `lengths.npy` (int64) and `prompt_len.npy` (int32). Document d is
`tokens[starts[d] : starts[d] + lengths[d]]` with its bos and eos; for a task or passkey
example its first `prompt_len[d] + 1` tokens are the bos and the prompt, and the loss is on the
rest. The files are written once from the TFDS source of the split (which stays the one place
examples are generated, and what evaluation reads whole examples from), then memory-mapped, so
a batch is a gather, never a decode.
"""

import dataclasses
import os
import shutil

import numpy as np

from nopejax import storage
from nopejax.data.sources import builder

_FILES = ("tokens", "starts", "lengths", "prompt_len")
_READ_CHUNK = 1024  # records decoded at a time while the arrays are written


@dataclasses.dataclass(frozen=True)
class Documents:
  """Documents as flat arrays (see the module docstring); `tokens` may be memory-mapped."""

  tokens: np.ndarray
  starts: np.ndarray
  lengths: np.ndarray
  prompt_len: np.ndarray

  def __len__(self):
    return len(self.starts)

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
  """Several sources as one set of documents, in the given order (one copy of the tokens)."""
  if len(parts) == 1:
    return parts[0]
  offsets = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
  return Documents(
    np.concatenate([np.asarray(p.tokens) for p in parts]),
    np.concatenate([p.starts + o for p, o in zip(parts, offsets)]),
    np.concatenate([p.lengths for p in parts]),
    np.concatenate([p.prompt_len for p in parts]),
  )


def _write(source, out_dir: str, *, text: bool, bos_id: int, eos_id: int, dtype) -> None:
  """The records of a TFDS `source` as the four arrays, written to `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  lengths, prompt_len = [], []
  with open(os.path.join(out_dir, "tokens.bin"), "wb") as f:
    for first in range(0, len(source), _READ_CHUNK):
      for record in source.__getitems__(range(first, min(first + _READ_CHUNK, len(source)))):
        prompt = record["inputs"]
        answer = record["inputs"][:0] if text else record["targets"]
        doc = np.concatenate([[bos_id], prompt, answer, [eos_id]]).astype(dtype)
        f.write(doc.tobytes())
        lengths.append(len(doc))
        prompt_len.append(0 if text else len(prompt))
  tokens = np.fromfile(os.path.join(out_dir, "tokens.bin"), dtype)
  os.remove(os.path.join(out_dir, "tokens.bin"))
  lengths = np.asarray(lengths, np.int64)
  arrays = {
    "tokens": tokens,
    "starts": np.cumsum(lengths) - lengths,
    "lengths": lengths,
    "prompt_len": np.asarray(prompt_len, np.int32),
  }
  for name, array in arrays.items():
    np.save(os.path.join(out_dir, f"{name}.npy"), array)


def load(directory) -> Documents:
  """The stored documents in `directory`, tokens memory-mapped; one-line error if unreadable."""
  directory = os.fspath(directory)
  try:
    arrays = {
      name: np.load(
        os.path.join(directory, f"{name}.npy"), mmap_mode="r" if name == "tokens" else None
      )
      for name in _FILES
    }
  except (OSError, ValueError) as e:
    raise ValueError(
      f"data.data_dir: the document cache {directory} is unreadable ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}); delete it to rebuild"
    ) from None
  n = len(arrays["starts"])
  if len(arrays["lengths"]) != n or len(arrays["prompt_len"]) != n:
    raise ValueError(f"data.data_dir: the document cache {directory} is inconsistent; delete it")
  return Documents(**arrays)


def stored(data_cfg, source, split: str, tok, *, text: bool) -> Documents:
  """The documents of `split` of the TFDS `source`, written under data.data_dir on first use
  (once per machine, uploaded once to a bucket data_dir) and memory-mapped."""
  name = source.dataset_info.full_name.replace("/", "-")
  dtype = builder.token_dtype(tok.vocab_size)

  def build(local):
    local = os.fspath(local)
    if os.path.exists(os.path.join(local, "prompt_len.npy")):
      return  # written by an earlier run; the last file written is the marker
    partial = f"{local}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _write(source, partial, text=text, bos_id=tok.bos_id, eos_id=tok.eos_id, dtype=dtype)
    shutil.rmtree(local, ignore_errors=True)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    os.rename(partial, local)

  local = storage.synced_dir(builder.data_dir(data_cfg), f"documents/{name}/{split}", build)
  return load(local)
