"""Whole examples for evaluation: task and passkey prompts with their answers, corpus files."""

import numpy as np

from nopejax import specs
from nopejax.data import tasks, tokenizers
from nopejax.data.sources import SOURCES
from nopejax.data.sources import passkey as passkey_source
from nopejax.data.sources import tasks as task_source


def _read_all(source) -> list[dict]:
  return source.__getitems__(range(len(source)))


def _example(record: dict, tok) -> dict:
  text = (record["prompt_text"] + record["answer_text"]).decode()
  return {
    "prompt": [tok.bos_id] + record["inputs"].tolist(),
    "answer": record["targets"].tolist() + [tok.eos_id],
    "length": int(record["length"]),
    "text": text,
  }


def test_lengths(data_cfg, task: str) -> list[int]:
  """The lengths n with a 'test_<n>' split: 1..max test length."""
  return list(range(1, task_source.task_lengths(data_cfg, task)[1] + 1))


def task_examples(data_cfg, task: str, split: str) -> list[dict]:
  """Examples of `task` in `split` ('train', 'validation' or 'test_<n>').

  Each is {'prompt': bos + prompt ids, 'answer': answer ids + eos, 'length': task
  length, 'text': prompt + answer}; greedy decoding from `prompt` should give
  `answer` exactly.
  """
  specs.check(
    task in tasks.TASKS,
    f"data.tasks: unknown task {task!r}; known: {', '.join(sorted(tasks.TASKS))}",
  )
  tok = tokenizers.get_tokenizer(data_cfg)
  sources = task_source.task_sources(data_cfg, tok, task)
  specs.check(
    split in sources,
    f"split: {task} has no split {split!r}; known: train, validation, "
    f"test_1..test_{test_lengths(data_cfg, task)[-1]}",
  )
  return [_example(r, tok) for r in _read_all(sources[split])]


def passkey_examples(data_cfg, length: int, depth: float) -> list[dict]:
  """`num_passkey` passkey examples of at most `length` tokens, needle at `depth`.

  Same format as `task_examples`: the prompt ends with 'The pass key is' and the
  answer is ' K.' (space, digits, period) then eos.
  """
  specs.check(
    length in data_cfg.passkey_lengths,
    f"data.passkey_lengths: {length} is not among {tuple(data_cfg.passkey_lengths)}",
  )
  specs.check(
    depth in data_cfg.passkey_depths,
    f"data.passkey_depths: {depth} is not among {tuple(data_cfg.passkey_depths)}",
  )
  tok = tokenizers.get_tokenizer(data_cfg)
  source = passkey_source.passkey_sources(data_cfg, tok)[
    passkey_source.passkey_split(length, depth)
  ]
  return [_example(r, tok) for r in _read_all(source)]


def text_documents(data_cfg, split: str = "validation") -> list[np.ndarray]:
  """Whole corpus documents of `split` as int32 [bos] + tokens + [eos] arrays."""
  tok = tokenizers.get_tokenizer(data_cfg)
  parts = SOURCES["text"].documents(data_cfg, tok, split)
  return [p.document(d).astype(np.int32) for p in parts for d in range(len(p))]
