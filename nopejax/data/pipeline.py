"""The grain input pipeline: stored records to fixed-length batches of rows.

A *document* is `[bos] + prompt + answer + [eos]` (a task or passkey example) or
`[bos] + text + [eos]` (a corpus file). A row of a batch holds one document
(`pack=False`) or several packed end to end, each with its own `segment_ids`
value and `positions` from 0. For every row, `targets[t]` is the token after
`inputs[t]` in the same document, and `loss_mask` is 1 where `targets[t]` is
trained on: the answer (with its eos) for tasks and passkey, every token for text.

Batches are dicts of numpy arrays, each process getting `batch_size /
process_count` rows:
  inputs, targets, segment_ids, positions  int32[B, T]
  loss_mask                                float32[B, T]
"""

import functools
from collections.abc import Iterator

import grain
import jax
import numpy as np
from absl import flags

from nopejax.data import tokenizers
from nopejax.data.sources import SOURCES

Batch = dict[str, np.ndarray]
# Decoding a record is Python under the GIL, so reader threads only contend
# (2 cores: 3.7k documents/s with none, 1.4k with grain's default 16);
# parallelism comes from data.num_workers processes instead.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def sources(data_cfg, split: str) -> tuple[tokenizers.Tokenizer, list]:
  """The tokenizer and the data sources holding `split` (one per task), built if needed."""
  tok = tokenizers.get_tokenizer(data_cfg)
  by_name = SOURCES[data_cfg.kind].sources(data_cfg, tok)
  found = [splits[split] for splits in by_name.values() if split in splits]
  if not found:
    known = sorted({s for splits in by_name.values() for s in splits})
    raise ValueError(
      f"split: {split!r} is not a split of data.kind={data_cfg.kind!r}; known: {', '.join(known)}"
    )
  return tok, found


class _Documents(grain.experimental.FlatMapTransform):
  """A stored record to its documents as unpadded rows (inputs, targets, loss_mask).

  A task or passkey record is one document, cut or refused when longer than
  seq_len + 1 tokens; a text file is cut into windows of seq_len + 1 tokens that
  overlap by one, so every token is a target exactly once.
  """

  def __init__(self, *, text: bool, seq_len: int, overflow: str, bos_id: int, eos_id: int):
    self.text, self.seq_len, self.overflow = text, seq_len, overflow
    self.bos_id, self.eos_id = bos_id, eos_id

  def flat_map(self, record: dict) -> list[Batch]:
    if self.text:
      doc = self._document(record["inputs"])
      return [
        _row(doc[s : s + self.seq_len + 1], prompt_len=0)
        for s in range(0, len(doc) - 1, self.seq_len)
      ]
    prompt = record["inputs"]
    doc = self._document(prompt, record["targets"])
    if len(doc) > self.seq_len + 1:
      if self.overflow == "error":
        raise ValueError(
          f"data.seq_len: a document of {len(doc)} tokens needs data.seq_len >= "
          f"{len(doc) - 1}, got {self.seq_len} (or set data.overflow=truncate)"
        )
      doc = doc[: self.seq_len + 1]
    return [_row(doc, prompt_len=len(prompt))]

  def _document(self, *parts: np.ndarray) -> np.ndarray:
    return np.concatenate([[self.bos_id], *parts, [self.eos_id]]).astype(np.int32)


def _row(doc: np.ndarray, prompt_len: int) -> Batch:
  # targets[t] = doc[t + 1], so the answer's first token is targets[prompt_len].
  return {
    "inputs": doc[:-1],
    "targets": doc[1:],
    "loss_mask": (np.arange(len(doc) - 1) >= prompt_len).astype(np.float32),
  }


def _pad_row(row: Batch, *, seq_len: int, pad_id: int) -> Batch:
  """One document per row: pad to seq_len, segment 1 on its tokens."""
  length = len(row["inputs"])
  pad = (0, seq_len - length)
  is_real_T = np.arange(seq_len) < length
  return {
    "inputs": np.pad(row["inputs"], pad, constant_values=pad_id),
    "targets": np.pad(row["targets"], pad, constant_values=pad_id),
    "segment_ids": is_real_T.astype(np.int32),
    "positions": np.where(is_real_T, np.arange(seq_len), 0).astype(np.int32),
    "loss_mask": np.pad(row["loss_mask"], pad),
  }


def _from_packed(row: Batch) -> Batch:
  # Grain numbers segments and positions per packed feature; inputs' serve all.
  return {
    "inputs": row["inputs"],
    "targets": row["targets"],
    "segment_ids": row["inputs_segment_ids"],
    "positions": row["inputs_positions"],
    "loss_mask": row["loss_mask"],
  }


def _rows(
  records: grain.IterDataset, data_cfg, tok, *, num_bins: int, shuffle: bool
) -> grain.IterDataset:
  """Stored records to fixed [seq_len] rows, packed or one document each."""
  docs = grain.experimental.FlatMapIterDataset(
    records,
    _Documents(
      text=SOURCES[data_cfg.kind].TEXT,
      seq_len=data_cfg.seq_len,
      overflow=data_cfg.overflow,
      bos_id=tok.bos_id,
      eos_id=tok.eos_id,
    ),
  )
  if not data_cfg.pack:
    return docs.map(functools.partial(_pad_row, seq_len=data_cfg.seq_len, pad_id=tok.pad_id))
  features = ("inputs", "targets", "loss_mask")
  packed = grain.experimental.FirstFitPackIterDataset(
    docs,
    length_struct={k: data_cfg.seq_len for k in features},
    num_packing_bins=num_bins,
    seed=data_cfg.seed,
    shuffle_bins=shuffle,
    padding_struct={"inputs": tok.pad_id, "targets": tok.pad_id, "loss_mask": 0},
  )
  return packed.map(_from_packed)


# ---------------------------------------------------------------- iterators


def _process_rows(data_cfg, process_index, process_count) -> tuple[int, int, int]:
  """(index, count, rows per process), defaulting to JAX's process index and count."""
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if data_cfg.batch_size % process_count:
    raise ValueError(
      f"data.batch_size: {data_cfg.batch_size} does not divide evenly across "
      f"{process_count} processes"
    )
  return process_index, process_count, data_cfg.batch_size // process_count


def train_iter(data_cfg, *, process_index=None, process_count=None) -> grain.DatasetIterator:
  """Endless per-process batches of the 'train' split, reshuffled every epoch.

  The iterator's `get_state()` is a JSON-able dict; `set_state` on a fresh
  iterator from the same config continues with exactly the batches that would
  have followed. Each process reads a disjoint 1/process_count of the documents.
  """
  index, count, rows = _process_rows(data_cfg, process_index, process_count)
  tok, found = sources(data_cfg, "train")
  records = grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in found])
  records = records[index::count]
  if data_cfg.shuffle:
    records = records.shuffle(seed=data_cfg.seed)  # reseeded per epoch by repeat
  records = records.repeat(None).to_iter_dataset(_READ_OPTIONS)
  batches = _rows(records, data_cfg, tok, num_bins=rows, shuffle=data_cfg.shuffle)
  batches = batches.batch(rows, drop_remainder=True)
  if data_cfg.num_workers:
    # grain 0.2.18's workers read absl flags, which fails outside an absl app
    # (google/grain#1355); flags parsed by an entry point are left alone.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
  return iter(batches)


def eval_iter(
  data_cfg, split: str = "validation", *, process_index=None, process_count=None
) -> Iterator[Batch]:
  """One deterministic pass over `split`, in per-process batches.

  Every process reads the whole split and keeps its own rows of each global
  batch, so all processes see the same number of batches (a collective step
  never waits on a process that ran out); the last batch is filled with empty
  rows (segment_ids and loss_mask 0).
  """
  index, _, rows = _process_rows(data_cfg, process_index, process_count)
  tok, found = sources(data_cfg, split)
  records = grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in found])
  batches = _rows(
    records.to_iter_dataset(_READ_OPTIONS),
    data_cfg,
    tok,
    num_bins=data_cfg.batch_size,
    shuffle=False,
  )
  batches = batches.batch(data_cfg.batch_size).map(
    functools.partial(
      _fill_and_take,
      batch_size=data_cfg.batch_size,
      start=index * rows,
      rows=rows,
      pad_id=tok.pad_id,
    )
  )
  return iter(batches)


def _fill_and_take(batch: Batch, *, batch_size: int, start: int, rows: int, pad_id: int) -> Batch:
  missing = batch_size - len(batch["inputs"])
  filled = {
    k: np.pad(
      v, ((0, missing), (0, 0)), constant_values=pad_id if k in ("inputs", "targets") else 0
    )
    for k, v in batch.items()
  }
  return {k: v[start : start + rows] for k, v in filled.items()}
