"""Global-order packing: vectorized rows equal a plain loop's, layouts depend on (seed, epoch)."""

import numpy as np

from nopejax.data import documents, packing


def loop_rows(docs, docs_by_row, seq_len, pad_id):
  out = {k: [] for k in packing.BATCH_KEYS}
  for ids in docs_by_row:
    row = {k: [] for k in out}
    for seg, d in enumerate(ids, 1):
      doc = docs.tokens[docs.starts[d] : docs.starts[d] + docs.lengths[d]][: seq_len + 1]
      n = len(doc) - 1
      row["inputs"] += list(doc[:-1])
      row["targets"] += list(doc[1:])
      row["segment_ids"] += [seg] * n
      row["positions"] += list(range(n))
      row["loss_mask"] += [float(t >= docs.prompt_len[d]) for t in range(n)]
    pad = seq_len - len(row["inputs"])
    for k, fill in (("inputs", pad_id), ("targets", pad_id)):
      out[k].append(row[k] + [fill] * pad)
    for k in ("segment_ids", "positions", "loss_mask"):
      out[k].append(row[k] + [0] * pad)
  return {k: np.asarray(v) for k, v in out.items()}


def random_docs(rng, n, low=3, high=12):
  lengths = rng.integers(low, high, size=n).astype(np.int64)
  starts = np.cumsum(lengths) - lengths
  tokens = rng.integers(4, 100, size=int(lengths.sum())).astype(np.uint16)
  return documents.Documents(tokens, starts, lengths, (lengths // 2).astype(np.int32))


def test_vectorized_rows_equal_a_loop_and_the_order_is_global():
  docs = random_docs(np.random.default_rng(0), 200)
  epoch = packing.layout(docs, packing.epoch_order(200, 3, 1), seq_len=32, pack=True)
  again = packing.layout(docs, packing.epoch_order(200, 3, 1), seq_len=32, pack=True)
  other = packing.layout(docs, packing.epoch_order(200, 3, 2), seq_len=32, pack=True)
  assert (epoch.order == again.order).all() and not (epoch.order == other.order).all()
  assert sorted(epoch.order) == list(range(200))
  by_row = [epoch.order[a:b] for a, b in zip(epoch.bounds[:-1], epoch.bounds[1:])]
  assert all((docs.lengths[d] - 1).sum() <= 32 for d in by_row)
  # Greedy: the next row's first document would not have fit.
  for d, nxt in zip(by_row[:-1], by_row[1:]):
    assert (docs.lengths[d] - 1).sum() + docs.lengths[nxt[0]] - 1 > 32
  # Rows 3..9, plus two empty rows (an evaluation batch's fill).
  ids, per_row = epoch.row_documents(3, 10)
  per_row = np.concatenate([per_row, [0, 0]])
  got = packing.rows(docs, ids, per_row, seq_len=32, pad_id=0)
  want = loop_rows(docs, by_row[3:10] + [[], []], 32, 0)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_unpacked_rows_and_truncation_and_text_windows():
  docs = random_docs(np.random.default_rng(1), 30, low=3, high=30)
  epoch = packing.layout(docs, packing.epoch_order(30, 0, 0, shuffle=False), seq_len=16, pack=False)
  assert (epoch.order == np.arange(30)).all() and (np.diff(epoch.bounds) == 1).all()
  ids, per_row = epoch.row_documents(0, 30)
  got = packing.rows(docs, ids, per_row, seq_len=16, pad_id=0)
  want = loop_rows(docs, [[d] for d in range(30)], 16, 0)  # cut to 17 tokens
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  windows = docs.windows(8)
  for d in range(len(docs)):
    doc = docs.tokens[docs.starts[d] : docs.starts[d] + docs.lengths[d]]
    mine = np.flatnonzero(np.isin(windows.starts, docs.starts[d] + np.arange(0, len(doc), 8)))
    pieces = [
      windows.tokens[windows.starts[w] : windows.starts[w] + windows.lengths[w]] for w in mine
    ]
    assert all(len(p) <= 9 for p in pieces)
    # Overlapping by one token, the windows' targets are the document's tokens after the first.
    assert np.concatenate([p[1:] for p in pieces]).tolist() == doc[1:].tolist()


def test_a_mixture_takes_each_source_in_its_proportion_deterministically():
  sizes, weights = [1000, 50, 300], [0.5, 0.3, 0.2]
  order = packing.mixture_order(sizes, weights, seed=0, epoch=4)
  assert (order == packing.mixture_order(sizes, weights, seed=0, epoch=4)).all()
  assert not (order == packing.mixture_order(sizes, weights, seed=0, epoch=5)).all()
  source = np.searchsorted(np.cumsum(sizes), order, side="right")
  counts = np.bincount(source, minlength=3)
  np.testing.assert_allclose(counts / counts.sum(), weights, atol=2e-3)
  # The small source repeats (405 draws of 50 documents): every one of its documents, each
  # 8 or 9 times; the large one gives 675 distinct documents of its 1000.
  small = np.bincount(order[source == 1] - 1000, minlength=50)
  assert small.min() >= 8 and small.max() <= 9
  assert len(np.unique(order[source == 0])) == counts[0]
