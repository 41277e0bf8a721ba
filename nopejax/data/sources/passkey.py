"""Passkey retrieval (Mohtashami and Jaggi 2023) as a stored source: a key hidden at a depth of
repeated filler text, asked for at the end."""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from nopejax import specs
from nopejax.data import tasks
from nopejax.data.sources import builder

TEXT = False  # one record, one document


def documents(data_cfg, tok, split: str) -> list:
  """The stored documents of `split`, one Documents per source holding it."""
  from nopejax.data import documents as documents_lib  # documents reads the builders

  found = builder.holding(sources(data_cfg, tok), split, data_cfg.kind)
  return [documents_lib.stored(data_cfg, s, split, tok) for s in found]


def weights(data_cfg) -> None:
  """Sources are taken as they come (a task mix in proportion to num_train)."""
  del data_cfg


@dataclasses.dataclass
class PasskeyConfig(tfds.core.BuilderConfig):
  lengths: tuple[int, ...] = ()
  train_lengths: tuple[int, ...] = ()  # () = lengths
  depths: tuple[float, ...] = ()
  num_passkey: int = 0
  num_train: int = 0
  num_test: int = 0
  seed: int = 0


def passkey_split(length: int, depth: float) -> str:
  return f"len{length}_depth{depth:g}".replace(".", "p")


class NopejaxPasskey(builder.Builder):
  """Passkey retrieval: 'len<L>_depth<D>' splits (D with p for the point), and
  'train'/'validation' drawing (length, depth) from train_lengths (else lengths) and depths,
  so a model can learn retrieval at short lengths and be tested at long ones. A document,
  bos + prompt + answer + eos, is at most `length` tokens, filled as far as fits."""

  def _features(self):
    return builder.example_features(self.tokenizer.vocab_size)

  def _splits(self):
    c = self.builder_config
    grid = [(n, d) for n in c.lengths for d in c.depths]
    train_grid = [(n, d) for n in c.train_lengths or c.lengths for d in c.depths]
    splits = {"train": (train_grid, c.num_train), "validation": (train_grid, c.num_test)}
    splits.update({passkey_split(n, d): ([(n, d)], c.num_passkey) for n, d in grid})
    return {name: (name, *spec) for name, spec in splits.items()}

  def _generate_examples(self, split):
    name, grid, num = split
    rng = np.random.default_rng([self.builder_config.seed, int(builder.digest(name), 16)])
    for i in range(num):
      length, depth = grid[rng.integers(len(grid))]
      key = int(rng.integers(1, 50_001))  # Mohtashami and Jaggi draw keys from 1..50000
      ex = self._fit(key, length, depth)
      yield i, self._encode(ex.prompt, ex.answer, length)

  def _fit(self, key: int, length: int, depth: float) -> tasks.Example:
    """The passkey example with the most fillers whose document fits `length`."""

    def doc_len(num_fillers):
      ex = tasks.passkey_text(key, num_fillers, depth)
      return 2 + len(self.tokenizer.encode(ex.prompt)) + len(self.tokenizer.encode(ex.answer))

    base = doc_len(0)
    if base > length:
      raise ValueError(
        f"data.passkey_lengths: {length} is shorter than a passkey prompt "
        f"with no filler ({base} tokens)"
      )
    per_filler = max(1, doc_len(1) - base)
    n = (length - base) // per_filler + 1
    while doc_len(n) > length:  # tokenizers are not additive: step down to a fit
      n -= 1
    return tasks.passkey_text(key, n, depth)


def sources(data_cfg, tokenizer) -> dict:
  """{'passkey': {split: source}}."""
  return {"passkey": passkey_sources(data_cfg, tokenizer)}


def passkey_sources(data_cfg, tokenizer) -> dict:
  params = dict(
    lengths=tuple(data_cfg.passkey_lengths),
    train_lengths=tuple(data_cfg.passkey_train_lengths),
    depths=tuple(data_cfg.passkey_depths),
    num_passkey=data_cfg.num_passkey,
    num_train=data_cfg.num_train,
    num_test=data_cfg.num_test,
    seed=data_cfg.seed,
  )
  name = f"passkey-{builder.digest([params, tokenizer.name])}"
  return builder.prepare(NopejaxPasskey, PasskeyConfig(name=name, **params), tokenizer, data_cfg)


def validate(data_cfg) -> None:
  lengths, depths = data_cfg.passkey_lengths, data_cfg.passkey_depths
  specs.check(
    len(lengths) > 0 and min(lengths) > 0,
    f"data.passkey_lengths: need positive lengths, got {lengths}",
  )
  specs.check(
    len(depths) > 0 and all(0 <= d <= 1 for d in depths),
    f"data.passkey_depths: need fractions in [0, 1], got {depths}",
  )
  specs.check(
    all(n > 0 for n in data_cfg.passkey_train_lengths),
    f"data.passkey_train_lengths: need positive lengths, got {data_cfg.passkey_train_lengths}",
  )
