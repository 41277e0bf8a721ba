"""Tokenizers: byte-level, the task word vocabulary, SentencePiece, Hugging Face.

Every tokenizer has `encode(str) -> list[int]` (no bos/eos added), `encode_batch(strs)` (the
same for many texts at once: a corpus is tokenized in batches), `decode(ids)
-> str` (special tokens dropped), `vocab_size`, `pad_id`, `bos_id`, `eos_id`, and
`name`, a fingerprint that changes whenever the ids would: datasets cache token
ids under it.

Id layouts:
  byte  0 pad, 1 bos, 2 eos, 3 + b for byte b (vocab 259): pad at 0 so zero
        padding is pad, and the bytes stay one contiguous range.
  task  0 pad, 1 bos, 2 eos, then `tasks.VOCAB` words in order.
  sentencepiece  trained here with pad 0, bos 1, eos 2, unk 3.
  hf    the file's own ids; bos/eos/pad looked up among common special tokens.
Nothing is downloaded: SentencePiece is trained on the local corpus (and kept under
data_dir/tokenizers, which may be a bucket), and a Hugging Face tokenizer is read
from a tokenizer.json (a local path or a bucket URL).
"""

import hashlib
import io
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nopejax import storage
from nopejax.data import tasks
from nopejax.data.sources import builder

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3
NAMES = ("auto", "byte", "task", "sentencepiece")  # plus HF_PREFIX + a tokenizer.json path
HF_PREFIX = "hf:"
MODEL_FILE = "sp.model"  # in data_dir/tokenizers/sp-KEY/


class Tokenizer(Protocol):
  name: str
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def encode_batch(self, texts: Sequence[str]) -> Sequence[Sequence[int]]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class _OneByOne:
  """`encode_batch` as a loop, for tokenizers without a native batch call."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]


class ByteTokenizer(_OneByOne):
  name = "byte"
  vocab_size = 256 + NUM_SPECIAL
  pad_id, bos_id, eos_id = PAD, BOS, EOS

  def encode(self, text: str) -> list[int]:
    return self.encode_array(text).tolist()

  def encode_array(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + NUM_SPECIAL

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode_array(t) for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) - NUM_SPECIAL for i in ids if int(i) >= NUM_SPECIAL)
    return data.decode("utf-8", errors="replace")


class TaskTokenizer(_OneByOne):
  """Word-level: the text is split on whitespace, each word one id."""

  pad_id, bos_id, eos_id = PAD, BOS, EOS

  def __init__(self):
    self._words = ["<pad>", "<bos>", "<eos>"] + tasks.VOCAB
    self._ids = {w: i for i, w in enumerate(self._words)}
    self.vocab_size = len(self._words)
    self.name = "task-" + _digest("\n".join(self._words).encode())

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[w] for w in text.split()]
    except KeyError as e:
      raise ValueError(f"task tokenizer: word {e.args[0]!r} is not in tasks.VOCAB") from None

  def decode(self, ids: Sequence[int]) -> str:
    return " ".join(self._words[int(i)] for i in ids if int(i) >= NUM_SPECIAL)


class SentencePieceTokenizer:
  def __init__(self, model_path: str):
    import sentencepiece  # lazy: an optional dependency

    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()
    self.name = "sp-" + _file_digest(model_path)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


def train_sentencepiece(documents, vocab_size: int, model_path: str) -> None:
  """Trains a BPE SentencePiece model on the text `documents` and writes it to `model_path`."""
  import sentencepiece  # lazy: an optional dependency
  from sentencepiece import sentencepiece_model_pb2

  # Trained in memory, then written to a temporary name and renamed (storage.write_bytes), so a
  # concurrent reader never sees a half-written model.
  writer = io.BytesIO()

  def paragraphs():
    # Paragraphs, not lines, so newlines are inside the text SentencePiece learns from.
    for doc in documents:
      yield from (p for p in doc.split("\n\n") if p.strip())

  # A fixed seed: two jobs that race to train it write the same model.
  sentencepiece.set_random_generator_seed(0)
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=paragraphs(),
    model_writer=writer,
    vocab_size=vocab_size,
    model_type="bpe",
    pad_id=PAD,
    bos_id=BOS,
    eos_id=EOS,
    unk_id=3,
    # Code needs its whitespace: identity normalization keeps newlines and runs
    # of spaces; byte fallback encodes any character never seen.
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    byte_fallback=True,
    character_coverage=1.0,
    split_digits=True,
    # A small corpus cannot fill a large vocabulary: vocab_size is an upper bound.
    hard_vocab_limit=False,
    input_sentence_size=200_000,
    shuffle_input_sentence=True,
    max_sentence_length=16384,
    num_threads=os.cpu_count() or 1,
    minloglevel=2,
  )
  # The model records its training options; the thread count is this machine's, not the
  # model's. Without it every machine trains the same bytes, hence the same tokenizer name.
  model = sentencepiece_model_pb2.ModelProto.FromString(writer.getvalue())
  model.trainer_spec.ClearField("num_threads")
  storage.write_bytes(model_path, model.SerializeToString())


class HFTokenizer:
  """A Hugging Face `tokenizer.json` (local or a bucket URL) through the `tokenizers` package."""

  _BOS = ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>", "<|im_start|>")
  _EOS = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "<|im_end|>")
  _PAD = ("<pad>", "<|pad|>", "<|finetune_right_pad_id|>")

  def __init__(self, path: str):
    import tokenizers  # lazy: ships with transformers, optional here

    self._tok = tokenizers.Tokenizer.from_str(storage.path(path).read_text(encoding="utf-8"))
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.bos_id = self._find(self._BOS, path, "bos")
    self.eos_id = self._find(self._EOS, path, "eos")
    pads = [i for i in map(self._tok.token_to_id, self._PAD) if i is not None]
    # Without a pad token, eos pads: padded positions are masked out anyway.
    self.pad_id = pads[0] if pads else self.eos_id
    self.name = "hf-" + _file_digest(path)

  def _find(self, candidates: tuple[str, ...], path: str, what: str) -> int:
    for token in candidates:
      if (i := self._tok.token_to_id(token)) is not None:
        return i
    raise ValueError(f"data.tokenizer: {path} has no {what} token among {candidates}")

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:12]


def _file_digest(path: str) -> str:
  return _digest(storage.path(path).read_bytes())


def resolve(data_cfg) -> str:
  """The tokenizer name with 'auto' resolved: task words for tasks, else bytes."""
  if data_cfg.tokenizer == "auto":
    return "task" if data_cfg.kind == "tasks" else "byte"
  return data_cfg.tokenizer


def get_tokenizer(data_cfg) -> Tokenizer:
  """The tokenizer `data_cfg.tokenizer` names; trains SentencePiece on first use."""
  name = resolve(data_cfg)
  if name == "byte":
    return ByteTokenizer()
  if name == "task":
    return TaskTokenizer()
  if name == "sentencepiece":
    return SentencePieceTokenizer(sentencepiece_model(data_cfg))
  if name.startswith(HF_PREFIX):
    return HFTokenizer(os.path.expanduser(name[len(HF_PREFIX) :]))
  raise ValueError(
    f"data.tokenizer: unknown tokenizer {name!r}; known: {', '.join(NAMES)}, "
    f"{HF_PREFIX}PATH/tokenizer.json"
  )


def corpus_of(data_cfg) -> str:
  """The corpus text comes from: data.corpus, or the corpora of data.mixture."""
  if data_cfg.mixture:
    return ",".join(part.rpartition(":")[0] for part in data_cfg.mixture.split(","))
  return data_cfg.corpus


def sentencepiece_model(data_cfg) -> str:
  """Local path of the SentencePiece model for the corpus's train split, trained if absent.

  It lives in data_dir/tokenizers/sp-KEY/ (`storage.synced_dir`): trained once per data_dir
  (with a bucket data_dir, by process 0 of the job, which publishes it; the other processes
  wait for it and download it).
  """
  from nopejax.data import corpus  # corpus reads tokenizers' names

  corpus_spec = corpus_of(data_cfg)
  key = _digest(
    repr(
      (
        corpus.fingerprint(corpus.files(corpus_spec)),
        data_cfg.text_field,
        data_cfg.val_fraction,
        data_cfg.vocab_size_sp,
      )
    ).encode()
  )

  def build(local):
    if not (local / MODEL_FILE).exists():
      train = corpus.texts(corpus_spec, data_cfg.text_field, "train", data_cfg.val_fraction)
      train_sentencepiece(train, data_cfg.vocab_size_sp, local / MODEL_FILE)

  local = storage.synced_dir(builder.data_dir(data_cfg), f"tokenizers/sp-{key}", build)
  return os.fspath(local / MODEL_FILE)
