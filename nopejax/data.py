"""The data config, its validation, and the grain input pipeline.

A *document* is `[bos] + prompt + answer + [eos]` (a task or passkey example) or
`[bos] + text + [eos]` (a corpus file). A row of a batch holds one document
(`pack=False`) or several packed end to end, each with its own `segment_ids`
value and `positions` from 0. For every row, `targets[t]` is the token after
`inputs[t]` in the same document, and `loss_mask` is 1 where `targets[t]` is
trained on: the answer (with its eos) for tasks and passkey, every token for text.

Batches are dicts of numpy arrays, each process getting `batch_size /
process_count` rows:
  inputs, targets, segment_ids, positions  int32[B, T]
  loss_mask                                float32[B, T]
"""

import functools
import os
from typing import Iterator

from absl import flags
import grain
import jax
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from nopejax import datasets
from nopejax import tasks
from nopejax import tokenizers

KINDS = ('tasks', 'text', 'passkey')
OVERFLOWS = ('error', 'truncate')
Batch = dict[str, np.ndarray]
# Decoding a record is Python under the GIL, so reader threads only contend
# (2 cores: 3.7k documents/s with none, 1.4k with grain's default 16);
# parallelism comes from data.num_workers processes instead.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def default_config() -> ml_collections.ConfigDict:
  """The `data` config group."""
  c = ml_collections.ConfigDict()
  c.kind = 'tasks'  # 'tasks' (length generalization), 'text' (LM on local files), 'passkey'
  c.tasks = 'copy'  # comma-separated task names; a mix is drawn in proportion to num_train
  c.train_length = placeholder(int)  # train on task lengths 1..L; None: the paper's L per task
  c.test_length = placeholder(int)  # splits test_1..test_N; None: the paper's largest test length
  c.num_train = 10_000  # train examples generated per task (and for passkey)
  c.num_test = 100  # examples per test length, and in each task's validation split
  c.seq_len = 256  # tokens per row; fits every task at the paper's test lengths
  c.batch_size = 64  # GLOBAL rows per step, split evenly across processes
  c.data_dir = placeholder(str)  # None: $NOPEJAX_DATA_DIR, else ~/.cache/nopejax/data
  c.seed = 0  # generation, shuffling and packing; same seed, same batches
  c.tokenizer = 'auto'  # auto (task words for tasks, bytes otherwise), byte, task, sentencepiece, hf:PATH
  c.vocab_size_sp = 4096  # SentencePiece vocabulary, trained on the corpus's train split
  c.corpus = 'stdlib'  # 'stdlib' (this Python's own .py files), a directory or a glob
  c.val_fraction = 0.05  # fraction of corpus files held out, chosen by a hash of the path
  c.pack = True  # pack several documents per row (segment_ids); False: one per row
  c.overflow = 'error'  # a task document longer than seq_len + 1: 'error' or 'truncate'
  c.shuffle = True  # shuffle training documents, differently each epoch
  c.num_workers = 0  # grain worker processes; 0 reads in-process (changing it changes the order)
  c.passkey_lengths = (256, 512, 1024, 2048)  # passkey document lengths, in tokens (evaluation)
  c.passkey_train_lengths = ()  # lengths of the train/validation splits; () = passkey_lengths
  c.passkey_depths = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle position as a fraction of the filler
  c.num_passkey = 20  # examples per (length, depth)
  return c


# ---------------------------------------------------------------- validation


def known_tasks() -> list[str]:
  return sorted(tasks.TASKS)


def task_names(data_cfg) -> list[str]:
  return [t.strip() for t in data_cfg.tasks.split(',') if t.strip()]


def vocab_size(data_cfg) -> int:
  """The tokenizer's vocab size, without training or loading a SentencePiece model."""
  return _vocab_size(data_cfg)


def _vocab_size(data_cfg) -> int:
  # `validate` takes the model's size as an argument named `vocab_size`.
  if tokenizers.resolve(data_cfg) == 'sentencepiece':
    return data_cfg.vocab_size_sp
  return tokenizers.get_tokenizer(data_cfg).vocab_size


def validate(data_cfg, vocab_size: int) -> None:  # pylint: disable=redefined-outer-name
  """Raises a one-line ValueError naming the bad `data.*` key. Builds nothing."""
  _check(data_cfg.kind in KINDS, f'data.kind: unknown kind {data_cfg.kind!r}; known: {", ".join(KINDS)}')
  tok = data_cfg.tokenizer
  _check(tok in tokenizers.NAMES or tok.startswith(tokenizers.HF_PREFIX),
         f'data.tokenizer: unknown tokenizer {tok!r}; known: {", ".join(tokenizers.NAMES)}, '
         f'{tokenizers.HF_PREFIX}PATH/tokenizer.json')
  if tok.startswith(tokenizers.HF_PREFIX):
    path = os.path.expanduser(tok[len(tokenizers.HF_PREFIX):])
    _check(os.path.isfile(path), f'data.tokenizer: {path} does not exist')
  _check(tok != 'task' or data_cfg.kind == 'tasks',
         f"data.tokenizer: 'task' only encodes task words, not data.kind={data_cfg.kind!r}")
  _check(data_cfg.overflow in OVERFLOWS,
         f'data.overflow: unknown value {data_cfg.overflow!r}; known: {", ".join(OVERFLOWS)}')
  for key in ('batch_size', 'seq_len', 'num_train', 'num_test', 'num_passkey'):
    _check(data_cfg[key] > 0, f'data.{key}: must be positive, got {data_cfg[key]}')
  _check(data_cfg.num_workers >= 0, f'data.num_workers: must be >= 0, got {data_cfg.num_workers}')
  _check(0 <= data_cfg.val_fraction < 1, f'data.val_fraction: must be in [0, 1), got {data_cfg.val_fraction}')
  if data_cfg.kind == 'tasks':
    _validate_tasks(data_cfg)
  if data_cfg.kind == 'passkey':
    _check(len(data_cfg.passkey_lengths) > 0 and min(data_cfg.passkey_lengths) > 0,
           f'data.passkey_lengths: need positive lengths, got {data_cfg.passkey_lengths}')
    _check(len(data_cfg.passkey_depths) > 0 and all(0 <= d <= 1 for d in data_cfg.passkey_depths),
           f'data.passkey_depths: need fractions in [0, 1], got {data_cfg.passkey_depths}')
    _check(all(n > 0 for n in data_cfg.passkey_train_lengths),
           f'data.passkey_train_lengths: need positive lengths, got {data_cfg.passkey_train_lengths}')
  if data_cfg.kind == 'text' or tok == 'sentencepiece':
    _validate_corpus(data_cfg.corpus)
  needed = _vocab_size(data_cfg)
  _check(needed <= vocab_size, f'model.vocab_size: data.tokenizer={tok!r} needs at least {needed}, '
         f'got {vocab_size}')


def _validate_tasks(data_cfg) -> None:
  names = task_names(data_cfg)
  _check(names, f'data.tasks: no task given; known: {", ".join(known_tasks())}')
  for name in names:
    _check(name in tasks.TASKS,
           f'data.tasks: unknown task {name!r}; known: {", ".join(known_tasks())}')
  for key in ('train_length', 'test_length'):
    _check(data_cfg[key] is None or data_cfg[key] > 0, f'data.{key}: must be positive, got {data_cfg[key]}')
  if 'lego' in names:
    # LEGO names each variable with a distinct letter.
    _check(max(datasets.task_lengths(data_cfg, 'lego')) <= len(tasks.LETTERS),
           f'data.test_length: lego supports lengths up to {len(tasks.LETTERS)}')


def _validate_corpus(corpus: str) -> None:
  is_path = corpus != 'stdlib' and not any(c in corpus for c in '*?[')
  _check(not is_path or os.path.exists(os.path.expanduser(corpus)), f'data.corpus: {corpus} does not exist')
  _, files = datasets.corpus_files(corpus)
  _check(any(os.path.getsize(f) > 0 for f in files), f'data.corpus: {corpus} holds no text files')


def _check(ok, message: str) -> None:
  if not ok:
    raise ValueError(message)


# ---------------------------------------------------------------- documents


def _sources(data_cfg, split: str) -> tuple[tokenizers.Tokenizer, list]:
  """The tokenizer and the tfds data sources holding `split`, built if needed."""
  tok = tokenizers.get_tokenizer(data_cfg)
  if data_cfg.kind == 'tasks':
    by_task = [datasets.task_sources(data_cfg, tok, t) for t in task_names(data_cfg)]
  elif data_cfg.kind == 'passkey':
    by_task = [datasets.passkey_sources(data_cfg, tok)]
  else:
    by_task = [datasets.text_sources(data_cfg, tok)]
  found = [sources[split] for sources in by_task if split in sources]
  if not found:
    known = sorted({s for sources in by_task for s in sources})
    raise ValueError(f'split: {split!r} is not a split of data.kind={data_cfg.kind!r}; known: {", ".join(known)}')
  return tok, found


class _Documents(grain.experimental.FlatMapTransform):
  """A stored record to its documents as unpadded rows (inputs, targets, loss_mask).

  A task or passkey record is one document, cut or refused when longer than
  seq_len + 1 tokens; a text file is cut into windows of seq_len + 1 tokens that
  overlap by one, so every token is a target exactly once.
  """

  def __init__(self, *, text: bool, seq_len: int, overflow: str, bos_id: int, eos_id: int):
    self.text, self.seq_len, self.overflow = text, seq_len, overflow
    self.bos_id, self.eos_id = bos_id, eos_id

  def flat_map(self, record: dict) -> list[Batch]:
    if self.text:
      doc = self._document(record['inputs'])
      return [_row(doc[s:s + self.seq_len + 1], prompt_len=0)
              for s in range(0, len(doc) - 1, self.seq_len)]
    prompt = record['inputs']
    doc = self._document(prompt, record['targets'])
    if len(doc) > self.seq_len + 1:
      if self.overflow == 'error':
        raise ValueError(f'data.seq_len: a document of {len(doc)} tokens needs data.seq_len >= '
                         f'{len(doc) - 1}, got {self.seq_len} (or set data.overflow=truncate)')
      doc = doc[:self.seq_len + 1]
    return [_row(doc, prompt_len=len(prompt))]

  def _document(self, *parts: np.ndarray) -> np.ndarray:
    return np.concatenate([[self.bos_id], *parts, [self.eos_id]]).astype(np.int32)


def _row(doc: np.ndarray, prompt_len: int) -> Batch:
  # targets[t] = doc[t + 1], so the answer's first token is targets[prompt_len].
  return {'inputs': doc[:-1], 'targets': doc[1:],
          'loss_mask': (np.arange(len(doc) - 1) >= prompt_len).astype(np.float32)}


def _pad_row(row: Batch, *, seq_len: int, pad_id: int) -> Batch:
  """One document per row: pad to seq_len, segment 1 on its tokens."""
  length = len(row['inputs'])
  pad = (0, seq_len - length)
  is_real_T = np.arange(seq_len) < length
  return {'inputs': np.pad(row['inputs'], pad, constant_values=pad_id),
          'targets': np.pad(row['targets'], pad, constant_values=pad_id),
          'segment_ids': is_real_T.astype(np.int32),
          'positions': np.where(is_real_T, np.arange(seq_len), 0).astype(np.int32),
          'loss_mask': np.pad(row['loss_mask'], pad)}


def _from_packed(row: Batch) -> Batch:
  # Grain numbers segments and positions per packed feature; inputs' serve all.
  return {'inputs': row['inputs'], 'targets': row['targets'],
          'segment_ids': row['inputs_segment_ids'], 'positions': row['inputs_positions'],
          'loss_mask': row['loss_mask']}


def _rows(records: grain.IterDataset, data_cfg, tok, *, num_bins: int, shuffle: bool) -> grain.IterDataset:
  """Stored records to fixed [seq_len] rows, packed or one document each."""
  docs = grain.experimental.FlatMapIterDataset(records, _Documents(
      text=data_cfg.kind == 'text', seq_len=data_cfg.seq_len, overflow=data_cfg.overflow,
      bos_id=tok.bos_id, eos_id=tok.eos_id))
  if not data_cfg.pack:
    return docs.map(functools.partial(_pad_row, seq_len=data_cfg.seq_len, pad_id=tok.pad_id))
  features = ('inputs', 'targets', 'loss_mask')
  packed = grain.experimental.FirstFitPackIterDataset(
      docs, length_struct={k: data_cfg.seq_len for k in features}, num_packing_bins=num_bins,
      seed=data_cfg.seed, shuffle_bins=shuffle,
      padding_struct={'inputs': tok.pad_id, 'targets': tok.pad_id, 'loss_mask': 0})
  return packed.map(_from_packed)


# ---------------------------------------------------------------- iterators


def _process_rows(data_cfg, process_index, process_count) -> tuple[int, int, int]:
  """(index, count, rows per process), defaulting to JAX's process index and count."""
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if data_cfg.batch_size % process_count:
    raise ValueError(f'data.batch_size: {data_cfg.batch_size} does not divide evenly across '
                     f'{process_count} processes')
  return process_index, process_count, data_cfg.batch_size // process_count


def train_iter(data_cfg, *, process_index=None, process_count=None) -> grain.DatasetIterator:
  """Endless per-process batches of the 'train' split, reshuffled every epoch.

  The iterator's `get_state()` is a JSON-able dict; `set_state` on a fresh
  iterator from the same config continues with exactly the batches that would
  have followed. Each process reads a disjoint 1/process_count of the documents.
  """
  index, count, rows = _process_rows(data_cfg, process_index, process_count)
  tok, sources = _sources(data_cfg, 'train')
  records = grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in sources])
  records = records[index::count]
  if data_cfg.shuffle:
    records = records.shuffle(seed=data_cfg.seed)  # reseeded per epoch by repeat
  records = records.repeat(None).to_iter_dataset(_READ_OPTIONS)
  batches = _rows(records, data_cfg, tok, num_bins=rows, shuffle=data_cfg.shuffle)
  batches = batches.batch(rows, drop_remainder=True)
  if data_cfg.num_workers:
    # grain 0.2.18's workers read absl flags, which fails outside an absl app
    # (google/grain#1355); flags parsed by an entry point are left alone.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
  return iter(batches)


def eval_iter(data_cfg, split: str = 'validation', *, process_index=None,
              process_count=None) -> Iterator[Batch]:
  """One deterministic pass over `split`, in per-process batches.

  Every process reads the whole split and keeps its own rows of each global
  batch, so all processes see the same number of batches (a collective step
  never waits on a process that ran out); the last batch is filled with empty
  rows (segment_ids and loss_mask 0).
  """
  index, _, rows = _process_rows(data_cfg, process_index, process_count)
  tok, sources = _sources(data_cfg, split)
  records = grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in sources])
  batches = _rows(records.to_iter_dataset(_READ_OPTIONS), data_cfg, tok, num_bins=data_cfg.batch_size, shuffle=False)
  batches = batches.batch(data_cfg.batch_size).map(functools.partial(
      _fill_and_take, batch_size=data_cfg.batch_size, start=index * rows, rows=rows, pad_id=tok.pad_id))
  return iter(batches)


def _fill_and_take(batch: Batch, *, batch_size: int, start: int, rows: int, pad_id: int) -> Batch:
  missing = batch_size - len(batch['inputs'])
  filled = {k: np.pad(v, ((0, missing), (0, 0)), constant_values=pad_id if k in ('inputs', 'targets') else 0)
            for k, v in batch.items()}
  return {k: v[start:start + rows] for k, v in filled.items()}


# ---------------------------------------------------------------- examples


def _read_all(source) -> list[dict]:
  return source.__getitems__(range(len(source)))


def _example(record: dict, tok) -> dict:
  text = (record['prompt_text'] + record['answer_text']).decode()
  return {'prompt': [tok.bos_id] + record['inputs'].tolist(),
          'answer': record['targets'].tolist() + [tok.eos_id],
          'length': int(record['length']), 'text': text}


def test_lengths(data_cfg, task: str) -> list[int]:
  """The lengths n with a 'test_<n>' split: 1..max test length."""
  return list(range(1, datasets.task_lengths(data_cfg, task)[1] + 1))


def task_examples(data_cfg, task: str, split: str) -> list[dict]:
  """Examples of `task` in `split` ('train', 'validation' or 'test_<n>').

  Each is {'prompt': bos + prompt ids, 'answer': answer ids + eos, 'length': task
  length, 'text': prompt + answer}; greedy decoding from `prompt` should give
  `answer` exactly.
  """
  _check(task in tasks.TASKS, f'data.tasks: unknown task {task!r}; known: {", ".join(known_tasks())}')
  tok = tokenizers.get_tokenizer(data_cfg)
  sources = datasets.task_sources(data_cfg, tok, task)
  _check(split in sources, f'split: {task} has no split {split!r}; known: train, validation, '
         f'test_1..test_{test_lengths(data_cfg, task)[-1]}')
  return [_example(r, tok) for r in _read_all(sources[split])]


def passkey_examples(data_cfg, length: int, depth: float) -> list[dict]:
  """`num_passkey` passkey examples of at most `length` tokens, needle at `depth`.

  Same format as `task_examples`: the prompt ends with 'The pass key is' and the
  answer is ' K.' (space, digits, period) then eos.
  """
  _check(length in data_cfg.passkey_lengths,
         f'data.passkey_lengths: {length} is not among {tuple(data_cfg.passkey_lengths)}')
  _check(depth in data_cfg.passkey_depths,
         f'data.passkey_depths: {depth} is not among {tuple(data_cfg.passkey_depths)}')
  tok = tokenizers.get_tokenizer(data_cfg)
  source = datasets.passkey_sources(data_cfg, tok)[datasets.passkey_split(length, depth)]
  return [_example(r, tok) for r in _read_all(source)]


def text_documents(data_cfg, split: str = 'validation') -> list[np.ndarray]:
  """Whole corpus files of `split` as int32 [bos] + tokens + [eos] arrays."""
  tok = tokenizers.get_tokenizer(data_cfg)
  source = datasets.text_sources(data_cfg, tok)[split]
  return [np.concatenate([[tok.bos_id], r['inputs'], [tok.eos_id]]).astype(np.int32)
          for r in _read_all(source)]
