"""The input pipeline: stored documents to fixed-length batches of rows, in one global order.

A *document* is `[bos] + prompt + answer + [eos]` (a task or passkey example) or a window of
`[bos] + text + [eos]` (a corpus file, cut into windows of seq_len + 1 tokens that overlap by
one). A row holds one document (`pack=False`) or several packed end to end, each with its own
`segment_ids` value and `positions` from 0. For every row, `targets[t]` is the token after
`inputs[t]` in the same document, and `loss_mask` is 1 where `targets[t]` is trained on: the
answer (with its eos) for tasks and passkey, every token for text.

With `data.random_positions_max` = L > 0, training rows (TrainIterator) number each document
with a sorted random subset of [0, L) instead (Ruoss et al. 2023; nopejax.data.positions),
drawn per document from (data.seed, epoch, global row), so it resumes exactly like the rows.
Evaluation (EvalBatches, and nopejax.eval, which reads whole examples) keeps 0, 1, ....

The order of the training rows is a function of `data.seed` and the epoch alone
(nopejax.data.packing): global batch k of an epoch is its rows [k B, (k + 1) B), and process p
of n takes rows [k B + p B / n, k B + (p + 1) B / n). The iterator state is that global
position, {"epoch", "batch"}, the same on every process, so a run can resume on any number of
processes and see exactly the batches it would have seen.

Batches are dicts of numpy arrays, each process getting `batch_size / process_count` rows:
  inputs, targets, segment_ids, positions  int32[B, T]
  loss_mask                                float32[B, T]
"""

import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

from nopejax.data import documents, packing, positions, tokenizers
from nopejax.data.sources import SOURCES, builder

Batch = dict[str, np.ndarray]


def sources(data_cfg, split: str) -> tuple[tokenizers.Tokenizer, list]:
  """The tokenizer and the TFDS sources holding `split` (tasks and passkey), built if needed."""
  tok = tokenizers.get_tokenizer(data_cfg)
  by_name = SOURCES[data_cfg.kind].sources(data_cfg, tok)
  return tok, builder.holding(by_name, split, data_cfg.kind)


def split_parts(data_cfg, split: str) -> tuple[tokenizers.Tokenizer, list[documents.Documents]]:
  """The tokenizer and the documents of `split`, one Documents per source (a task, a mixture
  component), as rows will take them: text cut into windows, task documents checked against
  seq_len."""
  tok = tokenizers.get_tokenizer(data_cfg)
  parts = SOURCES[data_cfg.kind].documents(data_cfg, tok, split)
  if SOURCES[data_cfg.kind].TEXT:
    return tok, [p.windows(data_cfg.seq_len) for p in parts]
  longest = max(int(p.lengths.max(initial=0)) for p in parts)
  if longest > data_cfg.seq_len + 1 and data_cfg.overflow == "error":
    raise ValueError(
      f"data.seq_len: a document of {longest} tokens needs data.seq_len >= {longest - 1}, "
      f"got {data_cfg.seq_len} (or set data.overflow=truncate)"
    )
  return tok, parts


def split_documents(data_cfg, split: str) -> tuple[tokenizers.Tokenizer, documents.Documents]:
  """The tokenizer and every document of `split`, the sources one after another."""
  tok, parts = split_parts(data_cfg, split)
  return tok, documents.concatenate(parts)


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


# ---------------------------------------------------------------- training


class TrainIterator:
  """Endless batches of the 'train' split for one process, reshuffled and repacked every epoch.

  `get_state()` is the global position {"epoch", "batch"} (JSON-able, equal on every process);
  `set_state` on a fresh iterator from the same data config, with any process count, continues
  with exactly the batches that would have followed.
  """

  def __init__(self, data_cfg, *, process_index=None, process_count=None):
    self.cfg = data_cfg
    index, _, self.rows = _process_rows(data_cfg, process_index, process_count)
    self.offset = index * self.rows  # this process's first row within a global batch
    tok, parts = split_parts(data_cfg, "train")
    self.docs, self.pad_id = documents.concatenate(parts), tok.pad_id
    self.sizes = [len(p) for p in parts]
    self.weights = SOURCES[data_cfg.kind].weights(data_cfg)
    self.epoch, self.batch, self._layout = 0, 0, None
    rows = self._epoch().num_rows
    if rows < data_cfg.batch_size:
      raise ValueError(
        f"data.batch_size: the train split packs into {rows} rows of data.seq_len="
        f"{data_cfg.seq_len}, fewer than data.batch_size={data_cfg.batch_size}; generate more "
        "documents (data.num_train) or lower the batch size"
      )

  def _epoch(self) -> packing.Epoch:
    if self._layout is None or self._layout[0] != self.epoch:
      c = self.cfg
      if self.weights is None:
        order = packing.epoch_order(len(self.docs), c.seed, self.epoch, c.shuffle)
      else:
        order = packing.mixture_order(self.sizes, self.weights, c.seed, self.epoch, c.shuffle)
      epoch = packing.layout(self.docs, order, seq_len=c.seq_len, pack=c.pack)
      self._layout = (self.epoch, epoch)
    return self._layout[1]

  def batches_in_epoch(self) -> int:
    return self._epoch().num_rows // self.cfg.batch_size

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    while self.batch >= self.batches_in_epoch():  # the last partial batch is dropped
      self.epoch, self.batch = self.epoch + 1, 0
    first = self.batch * self.cfg.batch_size + self.offset
    ids, per_row = self._epoch().row_documents(first, first + self.rows)
    self.batch += 1
    batch = packing.rows(self.docs, ids, per_row, seq_len=self.cfg.seq_len, pad_id=self.pad_id)
    if self.cfg.random_positions_max:  # a function of the rows' global place: resumes exactly
      batch["positions"] = positions.randomize(
        batch, self.cfg.random_positions_max, seed=self.cfg.seed, epoch=self.epoch, first_row=first
      )
    return batch

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "batch": self.batch}

  def set_state(self, state: dict) -> None:
    if not (isinstance(state, dict) and {"epoch", "batch"} <= set(state)):
      raise ValueError(f"data state: expected a global position {{epoch, batch}}, got {state!r}")
    self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

  def seek(self, num_batches: int) -> None:
    """Moves to the position after `num_batches` batches from the start (for a checkpoint of
    nopejax 0.1, whose data position does not carry over: one batch per step)."""
    self.epoch, self.batch = 0, 0
    while num_batches >= self.batches_in_epoch():
      num_batches -= self.batches_in_epoch()
      self.epoch += 1
    self.batch = num_batches

  def close(self) -> None:
    pass


def train_iter(data_cfg, *, process_index=None, process_count=None) -> TrainIterator:
  """This process's endless batches of the 'train' split (see TrainIterator)."""
  return TrainIterator(data_cfg, process_index=process_index, process_count=process_count)


class Prefetch:
  """`iterator`'s batches, prepared `depth` ahead on a background thread and passed through
  `transform` there (the put onto the devices), so the next batch is ready while a step runs.

  `get_state()` is the iterator's position after the last batch handed out, not after the
  ones waiting in the queue, so a checkpoint resumes exactly.
  """

  def __init__(self, iterator, transform=lambda batch: batch, depth: int = 2):
    self._iterator, self._transform = iterator, transform
    self._state = iterator.get_state()
    self._queue = queue.Queue(depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, name="prefetch", daemon=True)
    self._thread.start()

  def _fill(self):
    try:
      while not self._stop.is_set():
        item = (self._transform(next(self._iterator)), self._iterator.get_state(), None)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except Exception as e:  # handed to the consumer, which raises it where it waits
      self._queue.put((None, None, e))

  def __iter__(self):
    return self

  def __next__(self):
    batch, state, error = self._queue.get()
    if error is not None:
      raise error
    self._state = state
    return batch

  def get_state(self) -> dict:
    return self._state

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


# ---------------------------------------------------------------- evaluation


class EvalBatches:
  """One deterministic pass over `split`, in per-process batches, as often as iterated (the
  documents are read once).

  Every process lays out the whole split and keeps its own rows of each global batch, so all
  processes see the same number of batches (a collective step never waits on a process that
  ran out); the last batch is filled with empty rows (segment_ids and loss_mask 0).
  """

  def __init__(
    self, data_cfg, split: str = "validation", *, process_index=None, process_count=None
  ):
    self.cfg = data_cfg
    index, _, self.rows = _process_rows(data_cfg, process_index, process_count)
    self.offset = index * self.rows
    tok, self.docs = split_documents(data_cfg, split)
    self.pad_id = tok.pad_id
    self.epoch = packing.layout(
      self.docs, np.arange(len(self.docs)), seq_len=data_cfg.seq_len, pack=data_cfg.pack
    )

  def __iter__(self) -> Iterator[Batch]:
    total = self.epoch.num_rows
    for first in range(0, total, self.cfg.batch_size):
      lo = min(first + self.offset, total)
      hi = min(lo + self.rows, total)
      ids, per_row = self.epoch.row_documents(lo, hi)
      per_row = np.concatenate([per_row, np.zeros(self.rows - (hi - lo), np.int64)])
      yield packing.rows(self.docs, ids, per_row, seq_len=self.cfg.seq_len, pad_id=self.pad_id)


def eval_iter(
  data_cfg, split: str = "validation", *, process_index=None, process_count=None
) -> Iterator[Batch]:
  """One deterministic pass over `split` (see EvalBatches)."""
  return iter(
    EvalBatches(data_cfg, split, process_index=process_index, process_count=process_count)
  )


def restore_position(iterator: TrainIterator, state, step: int) -> None:
  """Sets `iterator` to a checkpoint's data position; a position saved by nopejax 0.1's grain
  pipeline (another order) is recomputed as `step` batches from the start."""
  if isinstance(state, dict) and {"epoch", "batch"} <= set(state):
    iterator.set_state(state)
    return
  logging.warning(
    "the checkpoint's data position is nopejax 0.1's; the data order changed in 0.2, so the "
    "run continues at batch %d of the new order",
    step,
  )
  iterator.seek(step)
