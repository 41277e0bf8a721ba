"""The TFDS plumbing every stored source shares.

Each builder writes array_record files (read back with no TensorFlow) under the data directory,
in a config whose name carries a hash of every generation parameter and of the tokenizer:
building twice with the same config reuses the files, and changing anything builds afresh.
Records store token ids, not just text, so reading is a lookup; `inputs` is the prompt (or a
whole text file) and `targets` the answer, neither with bos/eos.
"""

import hashlib
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from nopejax import storage


class _QuietConfigs(logging.Filter):
  """TFDS warns 'Using custom data configuration' on every load of our (always custom) configs."""

  def filter(self, record):
    return "Using custom data configuration" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietConfigs())


def data_dir(data_cfg) -> str:
  """The config's data_dir, else $NOPEJAX_DATA_DIR, else ~/.cache/nopejax/data (a local path,
  absolute, or a bucket URL)."""
  path = data_cfg.data_dir or os.environ.get("NOPEJAX_DATA_DIR") or "~/.cache/nopejax/data"
  return os.fspath(storage.path(path))


def digest(params) -> str:
  return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def token_dtype(vocab_size: int):
  # uint16 halves the files (a 34 MB corpus is 68 MB, not 136 MB) whenever it fits.
  return np.uint16 if vocab_size <= 2**16 else np.int32


def example_features(vocab_size: int) -> tfds.features.FeaturesDict:
  ids = tfds.features.Tensor(shape=(None,), dtype=token_dtype(vocab_size))
  return tfds.features.FeaturesDict(
    {
      "inputs": ids,
      "targets": ids,
      "length": np.int32,
      "prompt_text": tfds.features.Text(),
      "answer_text": tfds.features.Text(),
    }
  )


class Builder(tfds.core.GeneratorBasedBuilder):
  """Shared plumbing: a tokenizer held by the builder, files kept in order."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS looks next to the code for download checksums; nothing is downloaded,
  # and the lookup needs `importlib_resources`, which is not a dependency.
  code_path = None

  def __init__(self, *, tokenizer, **kwargs):
    self.tokenizer = tokenizer
    super().__init__(**kwargs)
    # Grain workers unpickle the data source, which rebuilds the builder from
    # these arguments; the features' dtype needs the tokenizer.
    self._original_state["tokenizer"] = tokenizer

  def _info(self) -> tfds.core.DatasetInfo:
    # Generation order is already random; keeping it makes files readable in order.
    return tfds.core.DatasetInfo(builder=self, features=self._features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated locally
    return {name: self._generate_examples(split) for name, split in self._splits().items()}

  def _encode(self, prompt: str, answer: str, length: int) -> dict:
    dtype = token_dtype(self.tokenizer.vocab_size)
    return {
      "inputs": np.asarray(self.tokenizer.encode(prompt), dtype),
      "targets": np.asarray(self.tokenizer.encode(answer), dtype),
      "length": length,
      "prompt_text": prompt,
      "answer_text": answer,
    }


def prepare(builder_cls, config, tokenizer, data_cfg) -> dict:
  # TFDS logs one line per build; its per-split progress bars (dozens for the
  # test splits) would drown a training log.
  tfds.disable_progress_bar()

  # Several processes of one job (or several jobs) may share a data directory: one builds while
  # the others wait, then they find the finished files and reuse them. ArrayRecord reads and
  # writes local files only, so a bucket data_dir is built (or fetched) into a local mirror.
  def build(local):
    builder_cls(config=config, tokenizer=tokenizer, data_dir=local_root).download_and_prepare(
      file_format="array_record"
    )

  root = data_dir(data_cfg)
  local_root = storage.local_mirror(root)
  storage.synced_dir(root, f"{builder_cls.name}/{config.name}", build)
  return builder_cls(config=config, tokenizer=tokenizer, data_dir=local_root).as_data_source()


def holding(by_name: dict, split: str, kind: str) -> list:
  """The sources of {name: {split: source}} that hold `split`; one-line error if none does."""
  found = [splits[split] for splits in by_name.values() if split in splits]
  if not found:
    known = sorted({s for splits in by_name.values() for s in splits})
    raise ValueError(
      f"split: {split!r} is not a split of data.kind={kind!r}; known: {', '.join(known)}"
    )
  return found
