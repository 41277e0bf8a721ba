"""TFDS builders for the synthetic tasks, passkey retrieval and a local text corpus.

Each builder writes array_record files (read back with no TensorFlow) under the
data directory, in a config whose name carries a hash of every generation
parameter and of the tokenizer: building twice with the same config reuses the
files, and changing anything builds afresh. Records store token ids, not just
text, so reading is a lookup; `inputs` is the prompt (or a whole text file) and
`targets` the answer, neither with bos/eos.
"""

import dataclasses
import fcntl
import fnmatch
import glob
import hashlib
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from nopejax import tasks

TASK_FEATURES = ('inputs', 'targets', 'length', 'prompt_text', 'answer_text')


class _QuietConfigs(logging.Filter):
  """TFDS warns 'Using custom data configuration' on every load of our (always custom) configs."""

  def filter(self, record):
    return 'Using custom data configuration' not in record.getMessage()


logging.getLogger('absl').addFilter(_QuietConfigs())


def data_dir(data_cfg) -> str:
  """The config's data_dir, else $NOPEJAX_DATA_DIR, else ~/.cache/nopejax/data."""
  path = data_cfg.data_dir or os.environ.get('NOPEJAX_DATA_DIR') or '~/.cache/nopejax/data'
  return os.path.abspath(os.path.expanduser(path))


def task_lengths(data_cfg, task: str) -> tuple[int, int]:
  """(train L, largest test length) for `task`: the config's, else the paper's."""
  spec = tasks.TASKS[task]
  return (data_cfg.train_length or spec.train_length, data_cfg.test_length or spec.test_length)


# ---------------------------------------------------------------- text corpus


def corpus_files(corpus: str) -> tuple[str, list[str]]:
  """(root, sorted text files) of a corpus: 'stdlib', a directory or a glob."""
  corpus = os.path.expanduser(corpus)
  if corpus == 'stdlib':
    root = os.path.dirname(os.__file__)
    # site-packages may be the running venv's; the corpus must not depend on it.
    files = [f for f in glob.glob(os.path.join(root, '**', '*.py'), recursive=True)
             if not fnmatch.fnmatch(f, '*-packages*')]
  elif os.path.isdir(corpus):
    root = corpus
    files = glob.glob(os.path.join(corpus, '**', '*'), recursive=True)
  else:
    files = glob.glob(corpus, recursive=True)
    root = os.path.commonpath(files) if files else corpus
    root = root if os.path.isdir(root) else os.path.dirname(root)
  return os.path.abspath(root), sorted(f for f in files if os.path.isfile(f) and not _is_binary(f))


def _is_binary(path: str) -> bool:
  with open(path, 'rb') as f:
    return b'\0' in f.read(1024)


def document_split(relpath: str, val_fraction: float) -> str:
  """'validation' for a stable `val_fraction` of paths, chosen by hash."""
  digest = hashlib.sha256(relpath.encode()).digest()
  return 'validation' if int.from_bytes(digest[:8], 'big') / 2**64 < val_fraction else 'train'


def corpus_fingerprint(root: str, files: list[str]) -> str:
  """Changes when any file is added, removed or modified."""
  stats = [(os.path.relpath(f, root), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  return _hash(stats)


# ---------------------------------------------------------------- builders


def _hash(params) -> str:
  return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _token_dtype(vocab_size: int):
  # uint16 halves the files (a 34 MB corpus is 68 MB, not 136 MB) whenever it fits.
  return np.uint16 if vocab_size <= 2**16 else np.int32


def _task_features(vocab_size: int) -> tfds.features.FeaturesDict:
  ids = tfds.features.Tensor(shape=(None,), dtype=_token_dtype(vocab_size))
  return tfds.features.FeaturesDict({
      'inputs': ids, 'targets': ids, 'length': np.int32,
      'prompt_text': tfds.features.Text(), 'answer_text': tfds.features.Text(),
  })


class _Builder(tfds.core.GeneratorBasedBuilder):
  """Shared plumbing: a tokenizer held by the builder, files kept in order."""

  VERSION = tfds.core.Version('1.0.0')
  # TFDS looks next to the code for download checksums; nothing is downloaded,
  # and the lookup needs `importlib_resources`, which is not a dependency.
  code_path = None

  def __init__(self, *, tokenizer, **kwargs):
    self.tokenizer = tokenizer
    super().__init__(**kwargs)
    # Grain workers unpickle the data source, which rebuilds the builder from
    # these arguments; the features' dtype needs the tokenizer.
    self._original_state['tokenizer'] = tokenizer

  def _info(self) -> tfds.core.DatasetInfo:
    # Generation order is already random; keeping it makes files readable in order.
    return tfds.core.DatasetInfo(builder=self, features=self._features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated locally
    return {name: self._generate_examples(split) for name, split in self._splits().items()}

  def _encode(self, prompt: str, answer: str, length: int) -> dict:
    dtype = _token_dtype(self.tokenizer.vocab_size)
    return {
        'inputs': np.asarray(self.tokenizer.encode(prompt), dtype),
        'targets': np.asarray(self.tokenizer.encode(answer), dtype),
        'length': length, 'prompt_text': prompt, 'answer_text': answer,
    }


@dataclasses.dataclass
class TasksConfig(tfds.core.BuilderConfig):
  task: str = ''
  train_length: int = 0
  test_length: int = 0
  num_train: int = 0
  num_test: int = 0
  seed: int = 0


class NopejaxTasks(_Builder):
  """One length-generalization task: 'train' and 'validation' on lengths 1..L,
  'test_<n>' for every n in 1..max test length (num_test examples each)."""

  def _features(self):
    return _task_features(self.tokenizer.vocab_size)

  def _splits(self) -> dict[str, tuple[list[int], int]]:
    c = self.builder_config
    in_dist = list(range(1, c.train_length + 1))
    splits = {'train': (in_dist, c.num_train), 'validation': (in_dist, c.num_test)}
    splits.update({f'test_{n}': ([n], c.num_test) for n in range(1, c.test_length + 1)})
    return {name: (name, *spec) for name, spec in splits.items()}

  def _generate_examples(self, split):
    name, lengths, num = split
    c = self.builder_config
    for i, (length, ex) in enumerate(tasks.generate(c.task, lengths, num, f'{c.seed}:{name}')):
      # The space makes prompt + answer one well-formed text for any tokenizer.
      yield i, self._encode(ex.prompt, ' ' + ex.answer, length)


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
  return f'len{length}_depth{depth:g}'.replace('.', 'p')


class NopejaxPasskey(_Builder):
  """Passkey retrieval: 'len<L>_depth<D>' splits (D with p for the point), and
  'train'/'validation' drawing (length, depth) from train_lengths (else lengths) and depths,
  so a model can learn retrieval at short lengths and be tested at long ones. A document,
  bos + prompt + answer + eos, is at most `length` tokens, filled as far as fits."""

  def _features(self):
    return _task_features(self.tokenizer.vocab_size)

  def _splits(self):
    c = self.builder_config
    grid = [(n, d) for n in c.lengths for d in c.depths]
    train_grid = [(n, d) for n in c.train_lengths or c.lengths for d in c.depths]
    splits = {'train': (train_grid, c.num_train), 'validation': (train_grid, c.num_test)}
    splits.update({passkey_split(n, d): ([(n, d)], c.num_passkey) for n, d in grid})
    return {name: (name, *spec) for name, spec in splits.items()}

  def _generate_examples(self, split):
    name, grid, num = split
    rng = np.random.default_rng([self.builder_config.seed, int(_hash(name), 16)])
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
      raise ValueError(f'data.passkey_lengths: {length} is shorter than a passkey prompt '
                       f'with no filler ({base} tokens)')
    per_filler = max(1, doc_len(1) - base)
    n = (length - base) // per_filler + 1
    while doc_len(n) > length:  # tokenizers are not additive: step down to a fit
      n -= 1
    return tasks.passkey_text(key, n, depth)


@dataclasses.dataclass
class TextConfig(tfds.core.BuilderConfig):
  root: str = ''
  files: tuple[str, ...] = ()
  val_fraction: float = 0.0


class NopejaxText(_Builder):
  """Whole files of a local corpus, split into 'train' and 'validation' by a
  hash of each file's path relative to the corpus root."""

  def _features(self):
    return tfds.features.FeaturesDict({
        'inputs': tfds.features.Tensor(shape=(None,), dtype=_token_dtype(self.tokenizer.vocab_size)),
        'path': tfds.features.Text(),
    })

  def _splits(self):
    return {'train': 'train', 'validation': 'validation'}

  def _generate_examples(self, split):
    c = self.builder_config
    dtype = _token_dtype(self.tokenizer.vocab_size)
    for path in c.files:
      rel = os.path.relpath(path, c.root)
      if document_split(rel, c.val_fraction) != split:
        continue
      with open(path, encoding='utf-8', errors='replace') as f:
        ids = self.tokenizer.encode(f.read())
      if ids:
        yield rel, {'inputs': np.asarray(ids, dtype), 'path': rel}


def _prepare(builder_cls, config, tokenizer, data_cfg) -> dict:
  # TFDS logs one line per build; its per-split progress bars (dozens for the
  # test splits) would drown a training log.
  tfds.disable_progress_bar()
  root = data_dir(data_cfg)
  os.makedirs(root, exist_ok=True)
  # Several processes of one job (or several jobs) may share a data directory: one builds
  # while the others wait on the lock, then find the finished files and reuse them.
  with open(os.path.join(root, f'.{config.name}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = builder_cls(config=config, tokenizer=tokenizer, data_dir=root)
    builder.download_and_prepare(file_format='array_record')
  return builder.as_data_source()


def task_sources(data_cfg, tokenizer, task: str) -> dict:
  """{split: tfds ArrayRecordDataSource} for `task`, building it if needed."""
  train_length, test_length = task_lengths(data_cfg, task)
  params = dict(task=task, train_length=train_length, test_length=test_length,
                num_train=data_cfg.num_train, num_test=data_cfg.num_test, seed=data_cfg.seed)
  name = f'{task}-{_hash([params, tokenizer.name])}'
  return _prepare(NopejaxTasks, TasksConfig(name=name, **params), tokenizer, data_cfg)


def passkey_sources(data_cfg, tokenizer) -> dict:
  params = dict(lengths=tuple(data_cfg.passkey_lengths),
                train_lengths=tuple(data_cfg.passkey_train_lengths),
                depths=tuple(data_cfg.passkey_depths),
                num_passkey=data_cfg.num_passkey, num_train=data_cfg.num_train,
                num_test=data_cfg.num_test, seed=data_cfg.seed)
  name = f'passkey-{_hash([params, tokenizer.name])}'
  return _prepare(NopejaxPasskey, PasskeyConfig(name=name, **params), tokenizer, data_cfg)


def text_sources(data_cfg, tokenizer) -> dict:
  root, files = corpus_files(data_cfg.corpus)
  name = f'text-{_hash([corpus_fingerprint(root, files), data_cfg.val_fraction, tokenizer.name])}'
  config = TextConfig(name=name, root=root, files=tuple(files), val_fraction=data_cfg.val_fraction)
  return _prepare(NopejaxText, config, tokenizer, data_cfg)
