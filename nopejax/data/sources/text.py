"""A local text corpus as a stored source: whole files, split into 'train' and 'validation' by
a hash of each file's path relative to the corpus root."""

import dataclasses
import fnmatch
import glob
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from nopejax import specs, storage
from nopejax.data.sources import builder

TEXT = True  # a record is a whole file, cut into rows


def corpus_files(corpus: str) -> tuple[str, list[str]]:
  """(root, sorted text files) of a corpus: 'stdlib', a directory or a glob."""
  corpus = os.path.expanduser(corpus)
  if corpus == "stdlib":
    root = os.path.dirname(os.__file__)
    # site-packages may be the running venv's; the corpus must not depend on it.
    files = [
      f
      for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
      if not fnmatch.fnmatch(f, "*-packages*")
    ]
  elif os.path.isdir(corpus):
    root = corpus
    files = glob.glob(os.path.join(corpus, "**", "*"), recursive=True)
  else:
    files = glob.glob(corpus, recursive=True)
    root = os.path.commonpath(files) if files else corpus
    root = root if os.path.isdir(root) else os.path.dirname(root)
  return os.path.abspath(root), sorted(f for f in files if os.path.isfile(f) and not _is_binary(f))


def _is_binary(path: str) -> bool:
  with open(path, "rb") as f:
    return b"\0" in f.read(1024)


def document_split(relpath: str, val_fraction: float) -> str:
  """'validation' for a stable `val_fraction` of paths, chosen by hash."""
  digest = hashlib.sha256(relpath.encode()).digest()
  return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def corpus_fingerprint(root: str, files: list[str]) -> str:
  """Changes when any file is added, removed or modified."""
  stats = [(os.path.relpath(f, root), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  return builder.digest(stats)


@dataclasses.dataclass
class TextConfig(tfds.core.BuilderConfig):
  root: str = ""
  files: tuple[str, ...] = ()
  val_fraction: float = 0.0


class NopejaxText(builder.Builder):
  """Whole files of a local corpus, split into 'train' and 'validation' by a
  hash of each file's path relative to the corpus root."""

  def _features(self):
    return tfds.features.FeaturesDict(
      {
        "inputs": tfds.features.Tensor(
          shape=(None,), dtype=builder.token_dtype(self.tokenizer.vocab_size)
        ),
        "path": tfds.features.Text(),
      }
    )

  def _splits(self):
    return {"train": "train", "validation": "validation"}

  def _generate_examples(self, split):
    c = self.builder_config
    dtype = builder.token_dtype(self.tokenizer.vocab_size)
    for path in c.files:
      rel = os.path.relpath(path, c.root)
      if document_split(rel, c.val_fraction) != split:
        continue
      with open(path, encoding="utf-8", errors="replace") as f:
        ids = self.tokenizer.encode(f.read())
      if ids:
        yield rel, {"inputs": np.asarray(ids, dtype), "path": rel}


def sources(data_cfg, tokenizer) -> dict:
  """{'text': {split: source}}."""
  return {"text": text_sources(data_cfg, tokenizer)}


def text_sources(data_cfg, tokenizer) -> dict:
  root, files = corpus_files(data_cfg.corpus)
  fingerprint = corpus_fingerprint(root, files)
  name = f"text-{builder.digest([fingerprint, data_cfg.val_fraction, tokenizer.name])}"
  config = TextConfig(name=name, root=root, files=tuple(files), val_fraction=data_cfg.val_fraction)
  return builder.prepare(NopejaxText, config, tokenizer, data_cfg)


def validate_corpus(corpus: str) -> None:
  specs.check(
    not storage.is_remote(corpus),
    f"data.corpus: {corpus} is a bucket URL; a corpus is read from local disk (copy it there "
    "first; data.data_dir may be a bucket)",
  )
  is_path = corpus != "stdlib" and not any(c in corpus for c in "*?[")
  specs.check(
    not is_path or os.path.exists(os.path.expanduser(corpus)),
    f"data.corpus: {corpus} does not exist",
  )
  _, files = corpus_files(corpus)
  specs.check(
    any(os.path.getsize(f) > 0 for f in files), f"data.corpus: {corpus} holds no text files"
  )


def validate(data_cfg) -> None:
  validate_corpus(data_cfg.corpus)
