"""Text corpora as a source: `data.corpus` (or the corpora of `data.mixture`), read by extension
and tokenized once into a cache of documents (nopejax.data.corpus), split into 'train' and
'validation' by a hash of each document's name."""

from nopejax import specs
from nopejax.data import corpus

TEXT = True  # documents are cut into windows of seq_len + 1 tokens


def components(data_cfg) -> list[tuple[str, float]]:
  """[(corpus, weight)]: the mixture's, else data.corpus with weight 1."""
  return corpus.mixture(data_cfg.mixture) if data_cfg.mixture else [(data_cfg.corpus, 1.0)]


def documents(data_cfg, tok, split: str) -> list:
  """One Documents per component, in data.mixture's order."""
  specs.check(
    split in ("train", "validation"),
    f"split: {split!r} is not a split of data.kind='text'; known: train, validation",
  )
  parts = [corpus.corpus_documents(data_cfg, tok, split, c) for c, _ in components(data_cfg)]
  for (name, _), part in zip(components(data_cfg), parts):
    # A mixture draws from every corpus each epoch; an empty one has nothing to give.
    specs.check(
      split != "train" or len(part), f"data.corpus: {name} has no documents in the train split"
    )
  return parts


def weights(data_cfg) -> list[float] | None:
  """The mixture's weights; None: the documents are taken as they come."""
  return [w for _, w in components(data_cfg)] if data_cfg.mixture else None


def validate(data_cfg) -> None:
  if data_cfg.mixture:
    for c, _ in components(data_cfg):
      corpus.validate(c, "data.mixture")
  else:
    corpus.validate(data_cfg.corpus)
