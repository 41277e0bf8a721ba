"""Randomized training positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost
Length Generalization of Transformers"), `data.random_positions_max` = L.

Each training document of n tokens gets, instead of 0, 1, ..., n - 1, a sorted uniformly random
n-subset of [0, L) (without replacement), drawn independently per document, so a model trained
on short documents has seen the positions (and distances) of documents up to L long. The paper
takes L as the longest evaluation length. Evaluation keeps the real positions.

The draw is a function of (data.seed, epoch, global row, segment id) alone, through a
counter-based hash (SplitMix64), so every process computes only its own rows and a resumed run
sees the same positions. It is vectorized over the batch: each document draws n integers of
[0, L) with replacement, drops repeats, and draws again as many as it lacks until it holds n
distinct (the first n distinct draws of an i.i.d. stream: every subset equally likely, up to
the hash's bias below L / 2**32); a document taking more than half of [0, L) draws the integers
it leaves out instead, so it never waits on the last few free ones. The cost is a few sorts of
the batch's tokens per batch (about 10 ms for 64 rows of 2,048 tokens on one core), however
large L is; a Python loop per document, or a permutation of [0, L) per document, would not be.
"""

import itertools

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment: 2**64 / the golden ratio


def _mix(x_N):
  """SplitMix64's finalizer: a bijection of uint64 that scrambles every bit (wrapping arithmetic,
  which numpy arrays do silently)."""
  x_N = (x_N ^ (x_N >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x_N = (x_N ^ (x_N >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x_N ^ (x_N >> np.uint64(31))


def _key(*parts_N):
  """A 64-bit key per element from integer arrays (or scalars) broadcast together."""
  shape = np.broadcast_shapes(*(np.shape(p) for p in parts_N))
  key_N = np.zeros(shape, np.uint64)
  for part in parts_N:
    key_N = _mix(key_N + _GOLDEN + np.asarray(part).astype(np.uint64))
  return key_N


def _uniform(counter_N, high):
  """An integer of [0, high) per counter (multiply-shift of 32 hashed bits: bias < high/2**32)."""
  return ((_mix(counter_N) >> np.uint64(32)) * np.uint64(high) >> np.uint64(32)).astype(np.int64)


def _sorted_unique(x_N):
  """np.unique of an int64 array, by one sort (numpy 2's np.unique hashes first, 10x slower)."""
  x_N = np.sort(x_N)
  return x_N[np.append(True, x_N[1:] != x_N[:-1])] if len(x_N) else x_N


def _distinct(key_D, count_D, high):
  """Sorted `d * high + value`: count_D[d] distinct values of [0, high) for each document d, the
  first distinct ones of its stream of uniform draws. count_D[d] <= high / 2, so every draw is
  new with probability >= 1/2 and the shortfall halves each round or faster (on average); a
  round after the first draws only the shortfall and looks its draws up in the rounds before by
  binary search."""
  doc_D = np.arange(len(count_D), dtype=np.int64)
  held, short_D = [], count_D  # each round's new values (if any), sorted
  for round_ in itertools.count():
    doc_M = np.repeat(doc_D, short_D)
    draw_M = np.arange(len(doc_M), dtype=np.uint64) - np.repeat(
      np.cumsum(short_D) - short_D, short_D
    ).astype(np.uint64)
    base_D = key_D + _GOLDEN * np.full_like(key_D, round_ << 32)  # arrays wrap without a warning
    new_M = _sorted_unique(doc_M * high + _uniform(base_D[doc_M] + _GOLDEN * draw_M, high))
    for old_N in held:
      at_M = np.minimum(np.searchsorted(old_N, new_M), len(old_N) - 1)
      new_M = new_M[old_N[at_M] != new_M]
    if len(new_M):
      held.append(new_M)
    short_D = short_D - np.bincount(new_M // high, minlength=len(count_D))
    if not short_D.any():
      drawn_N = np.concatenate([np.empty(0, np.int64), *held])
      return drawn_N if len(held) <= 1 else np.sort(drawn_N)


def sorted_subsets(key_D, size_D, high):
  """For each document d, size_D[d] <= high distinct integers of [0, high) in increasing order,
  every such subset equally likely and a function of key_D[d] alone; concatenated, int64."""
  size_D = np.asarray(size_D, np.int64)
  dense_D = 2 * size_D > high  # most of the range: draw the integers left out instead
  drawn_N = _distinct(key_D, np.where(dense_D, high - size_D, size_D), high)
  if dense_D.any():
    every_N = (np.flatnonzero(dense_D)[:, None] * high + np.arange(high)).ravel()
    kept_N = drawn_N[~dense_D[drawn_N // high]]
    drawn_N = np.sort(np.concatenate([kept_N, every_N[~np.isin(every_N, drawn_N)]]))
  return drawn_N % high


def randomize(batch, high: int, *, seed: int, epoch: int, first_row: int) -> np.ndarray:
  """`batch["positions"]` with every document's positions made a sorted random subset of
  [0, high), keyed by (seed, epoch, first_row + row, segment id): the rows are the epoch's
  global rows first_row, first_row + 1, ... A document is a run of one segment id > 0 (at most
  `high` tokens); padding keeps its positions."""
  segment_ids_RT = batch["segment_ids"]
  real_RT = segment_ids_RT > 0
  new_RT = np.ones(segment_ids_RT.shape, bool)
  new_RT[:, 1:] = segment_ids_RT[:, 1:] != segment_ids_RT[:, :-1]
  start_D = np.flatnonzero((new_RT & real_RT)[real_RT])  # each document's first token
  size_D = np.diff(np.append(start_D, np.count_nonzero(real_RT)))
  row_D = np.nonzero(real_RT)[0][start_D]
  key_D = _key(seed, epoch, first_row + row_D, segment_ids_RT[real_RT][start_D])
  out_RT = batch["positions"].copy()
  out_RT[real_RT] = sorted_subsets(key_D, size_D, high)
  return out_RT
