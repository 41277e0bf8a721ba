"""The `data` config group, its validation, and the frozen DataSpec the pipeline reads."""

import dataclasses
import os

import ml_collections
from ml_collections.config_dict import placeholder

from nopejax import specs, storage
from nopejax.data import tokenizers
from nopejax.data.sources import SOURCES

KINDS = tuple(SOURCES)
OVERFLOWS = ("error", "truncate")


def default_config() -> ml_collections.ConfigDict:
  """The `data` config group."""
  c = ml_collections.ConfigDict()
  c.kind = "tasks"  # 'tasks' (length generalization), 'text' (LM on local files), 'passkey'
  c.tasks = "copy"  # comma-separated task names; a mix is drawn in proportion to num_train
  c.train_length = placeholder(int)  # train on task lengths 1..L; None: the paper's L per task
  c.test_length = placeholder(int)  # splits test_1..test_N; None: the paper's largest test length
  c.num_train = 10_000  # train examples generated per task (and for passkey)
  c.num_test = 100  # examples per test length, and in each task's validation split
  c.seq_len = 256  # tokens per row; fits every task at the paper's test lengths
  c.batch_size = 64  # GLOBAL rows per step, split evenly across processes
  c.data_dir = placeholder(str)  # None: $NOPEJAX_DATA_DIR, else ~/.cache/nopejax/data
  c.seed = 0  # generation, shuffling and packing; same seed, same batches
  c.tokenizer = "auto"  # auto (tasks: task words, else bytes)|byte|task|sentencepiece|hf:PATH
  c.vocab_size_sp = 4096  # SentencePiece vocabulary, trained on the corpus's train split
  c.corpus = "stdlib"  # 'stdlib' (this Python's .py files), a directory, a glob, or a,b,...
  c.text_field = "text"  # the field (.jsonl) or column (.parquet) that holds a document's text
  c.mixture = ""  # 'GLOB:WEIGHT,GLOB:WEIGHT': corpora mixed in those proportions (over corpus)
  c.val_fraction = 0.05  # fraction of corpus files held out, chosen by a hash of the path
  c.pack = True  # pack several documents per row (segment_ids); False: one per row
  c.overflow = "error"  # a task document longer than seq_len + 1: 'error' or 'truncate'
  c.shuffle = True  # shuffle training documents, differently each epoch (by seed and epoch)
  c.num_workers = 0  # worker processes that tokenize a corpus (0: in this process)
  c.passkey_lengths = (256, 512, 1024, 2048)  # passkey document lengths, in tokens (evaluation)
  c.passkey_train_lengths = ()  # lengths of the train/validation splits; () = passkey_lengths
  c.passkey_depths = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle position as a fraction of the filler
  c.num_passkey = 20  # examples per (length, depth)
  # Randomized positions (Ruoss et al. 2023): each training document's positions become a sorted
  # random subset of [0, this), drawn per document from the seed and the row (resumes exactly);
  # the paper sets it to the longest evaluation length. Evaluation keeps 0, 1, .... It reaches
  # every scheme that reads positions (window sizes count in them too); a NoPE-only model
  # ignores it. With model.input_positions=learned, model.max_len must cover it.
  c.random_positions_max = 0  # 0: off (positions 0, 1, ...); else an integer >= seq_len
  return c


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The validated `data` group: the same fields, lists as tuples (see default_config)."""

  kind: str = "tasks"
  tasks: str = "copy"
  train_length: int | None = None
  test_length: int | None = None
  num_train: int = 10_000
  num_test: int = 100
  seq_len: int = 256
  batch_size: int = 64
  data_dir: str | None = None
  seed: int = 0
  tokenizer: str = "auto"
  vocab_size_sp: int = 4096
  corpus: str = "stdlib"
  text_field: str = "text"
  mixture: str = ""
  val_fraction: float = 0.05
  pack: bool = True
  overflow: str = "error"
  shuffle: bool = True
  num_workers: int = 0
  passkey_lengths: tuple = (256, 512, 1024, 2048)
  passkey_train_lengths: tuple = ()
  passkey_depths: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
  num_passkey: int = 20
  random_positions_max: int = 0

  @property
  def task_names(self) -> list[str]:
    return [t.strip() for t in self.tasks.split(",") if t.strip()]


def vocab_size(data_cfg) -> int:
  """The tokenizer's vocab size (of a `data` group or DataSpec), without training SentencePiece."""
  if tokenizers.resolve(data_cfg) == "sentencepiece":
    return data_cfg.vocab_size_sp
  return tokenizers.get_tokenizer(data_cfg).vocab_size


def resolve(group, model_vocab_size: int) -> DataSpec:
  """Validates the `data` group (one-line errors naming the key) into a DataSpec; builds nothing."""
  if isinstance(group, DataSpec):
    return group
  d = specs.from_group(DataSpec, group)
  specs.check(d.kind in KINDS, f"data.kind: unknown kind {d.kind!r}; known: {', '.join(KINDS)}")
  tok = d.tokenizer
  specs.check(
    tok in tokenizers.NAMES or tok.startswith(tokenizers.HF_PREFIX),
    f"data.tokenizer: unknown tokenizer {tok!r}; known: {', '.join(tokenizers.NAMES)}, "
    f"{tokenizers.HF_PREFIX}PATH/tokenizer.json",
  )
  if tok.startswith(tokenizers.HF_PREFIX):
    path = os.path.expanduser(tok[len(tokenizers.HF_PREFIX) :])
    specs.check(storage.path(path).is_file(), f"data.tokenizer: {path} does not exist")
  specs.check(
    tok != "task" or d.kind == "tasks",
    f"data.tokenizer: 'task' only encodes task words, not data.kind={d.kind!r}",
  )
  specs.check(
    d.overflow in OVERFLOWS,
    f"data.overflow: unknown value {d.overflow!r}; known: {', '.join(OVERFLOWS)}",
  )
  for key in ("batch_size", "seq_len", "num_train", "num_test", "num_passkey"):
    specs.positive(getattr(d, key), f"data.{key}")
  top = d.random_positions_max
  specs.check(
    isinstance(top, int) and not isinstance(top, bool) and (top == 0 or d.seq_len <= top < 2**31),
    "data.random_positions_max: expected 0 (off) or an integer in [data.seq_len="
    f"{d.seq_len}, 2**31) (positions of a row's documents are drawn from [0, it)), got {top!r}",
  )
  specs.check(d.num_workers >= 0, f"data.num_workers: must be >= 0, got {d.num_workers}")
  specs.check(
    0 <= d.val_fraction < 1, f"data.val_fraction: must be in [0, 1), got {d.val_fraction}"
  )
  specs.check(
    not d.mixture or d.kind == "text",
    f"data.mixture: mixes text corpora; data.kind={d.kind!r} (set data.kind=text)",
  )
  specs.check(d.text_field, "data.text_field: must name a field, got ''")
  SOURCES[d.kind].validate(d)
  if d.kind != "text" and tok == "sentencepiece":
    SOURCES["text"].validate(d)  # SentencePiece trains on the corpus
  needed = vocab_size(d)
  specs.check(
    needed <= model_vocab_size,
    f"model.vocab_size: data.tokenizer={tok!r} needs at least {needed}, got {model_vocab_size}",
  )
  return d
