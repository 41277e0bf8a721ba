"""Rows in one global order: documents packed per epoch into rows of `seq_len` in an order that
depends on the data seed and the epoch only, so every process, however many there are, agrees
on every row of every batch.

A document (nopejax.data.documents) fills `length - 1` positions of a row (inputs = doc[:-1],
targets = doc[1:]), numbered from 0, with its own segment id (1, 2, ... within the row); its
loss mask is 1 from position `prompt_len` on. (Training rows renumber the positions when
`data.random_positions_max` is set: nopejax.data.positions.) Everything here is vectorized: one
`searchsorted` per row to lay out an epoch, a few gathers per batch, no work per document in
Python.
"""

import dataclasses

import numpy as np

from nopejax.data.documents import Documents

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def epoch_order(num_docs: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The document order of `epoch`: a permutation from (seed, epoch) alone."""
  if not shuffle:
    return np.arange(num_docs)
  return np.random.default_rng([seed, epoch]).permutation(num_docs)


def row_bounds(occupancy: np.ndarray, seq_len: int, pack: bool = True) -> np.ndarray:
  """Greedy in-order packing: documents bounds[r]:bounds[r + 1] (positions in the given order)
  make row r; a row takes documents while they fit in `seq_len` positions (one per row when
  `pack` is False)."""
  if not pack:
    return np.arange(len(occupancy) + 1, dtype=np.int64)
  cum = np.concatenate([[0], np.cumsum(occupancy, dtype=np.int64)])
  bounds, start = [0], 0
  while start < len(occupancy):
    start = int(np.searchsorted(cum, cum[start] + seq_len, side="right")) - 1
    bounds.append(start)
  return np.asarray(bounds, dtype=np.int64)


def rows(docs: Documents, ids: np.ndarray, per_row: np.ndarray, *, seq_len: int, pad_id: int):
  """[R, seq_len] batch arrays: row r holds documents `ids[sum(per_row[:r]):][:per_row[r]]`,
  each cut to `seq_len + 1` tokens."""
  ids = np.asarray(ids, np.int64)
  num_rows = len(per_row)
  occ = np.minimum(docs.lengths[ids] - 1, seq_len)  # positions each document fills
  first_of_row = np.cumsum(per_row) - per_row  # index into ids of each row's first document
  cum = np.concatenate([[0], np.cumsum(occ)])  # where each document starts, in the flat
  doc_start = cum[:-1]  # order of the batch's tokens; rows may hold no document (padding)
  doc_column = doc_start - np.repeat(cum[first_of_row], per_row)
  doc_segment = np.arange(len(ids)) - np.repeat(first_of_row, per_row) + 1

  within = np.arange(int(occ.sum())) - np.repeat(doc_start, occ)
  at = (
    np.repeat(np.repeat(np.arange(num_rows), per_row), occ),
    np.repeat(doc_column, occ) + within,
  )
  source = np.repeat(docs.starts[ids], occ) + within

  shape = (num_rows, seq_len)
  out = {
    "inputs": np.full(shape, pad_id, np.int32),
    "targets": np.full(shape, pad_id, np.int32),
    "segment_ids": np.zeros(shape, np.int32),
    "positions": np.zeros(shape, np.int32),
    "loss_mask": np.zeros(shape, np.float32),
  }
  out["inputs"][at] = docs.tokens[source]
  out["targets"][at] = docs.tokens[source + 1]
  out["segment_ids"][at] = np.repeat(doc_segment, occ)
  out["positions"][at] = within
  out["loss_mask"][at] = within >= np.repeat(docs.prompt_len[ids], occ)
  return out


@dataclasses.dataclass(frozen=True)
class Epoch:
  """One epoch's layout: its documents in order and where each row's begin and end."""

  order: np.ndarray
  bounds: np.ndarray

  @property
  def num_rows(self) -> int:
    return len(self.bounds) - 1

  def row_documents(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """(document ids, documents per row) of rows first..last-1."""
    ids = self.order[self.bounds[first] : self.bounds[last]]
    return ids, np.diff(self.bounds[first : last + 1])


def mixture_order(sizes, weights, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """An epoch of a mixture: as many documents as all sources hold, source i contributing the
  fraction weights[i] / sum(weights) of them (each source's own documents drawn without
  replacement, cycling when it has too few), then shuffled together; ids index the sources'
  documents one after another. A function of (seed, epoch) alone."""
  total, weights = sum(sizes), np.asarray(weights, np.float64)
  counts = np.maximum(1, np.round(total * weights / weights.sum()).astype(np.int64))
  offsets = np.cumsum([0] + list(sizes[:-1]))
  ids = []
  for i, (size, count, offset) in enumerate(zip(sizes, counts, offsets)):
    rng = np.random.default_rng([seed, epoch, i])
    cycles = -(-int(count) // size)
    draws = [rng.permutation(size) if shuffle else np.arange(size) for _ in range(cycles)]
    ids.append(offset + np.concatenate(draws)[:count])
  ids = np.concatenate(ids)
  return np.random.default_rng([seed, epoch]).permutation(ids) if shuffle else ids


def layout(docs: Documents, order: np.ndarray, *, seq_len: int, pack: bool) -> Epoch:
  """The epoch of `docs` taken in `order`, packed into rows."""
  occupancy = np.minimum(docs.lengths[order] - 1, seq_len)
  return Epoch(order, row_bounds(occupancy, seq_len, pack))
