"""The length-generalization tasks as a stored source: 'train' and 'validation' on lengths 1..L,
'test_<n>' for every n in 1..the largest test length (data.num_test examples each)."""

import dataclasses

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


def task_lengths(data_cfg, task: str) -> tuple[int, int]:
  """(train L, largest test length) for `task`: the config's, else the paper's."""
  spec = tasks.TASKS[task]
  return (data_cfg.train_length or spec.train_length, data_cfg.test_length or spec.test_length)


@dataclasses.dataclass
class TasksConfig(tfds.core.BuilderConfig):
  task: str = ""
  train_length: int = 0
  test_length: int = 0
  num_train: int = 0
  num_test: int = 0
  seed: int = 0


class NopejaxTasks(builder.Builder):
  """One length-generalization task: 'train' and 'validation' on lengths 1..L,
  'test_<n>' for every n in 1..max test length (num_test examples each)."""

  def _features(self):
    return builder.example_features(self.tokenizer.vocab_size)

  def _splits(self) -> dict[str, tuple[list[int], int]]:
    c = self.builder_config
    in_dist = list(range(1, c.train_length + 1))
    splits = {"train": (in_dist, c.num_train), "validation": (in_dist, c.num_test)}
    splits.update({f"test_{n}": ([n], c.num_test) for n in range(1, c.test_length + 1)})
    return {name: (name, *spec) for name, spec in splits.items()}

  def _generate_examples(self, split):
    name, lengths, num = split
    c = self.builder_config
    for i, (length, ex) in enumerate(tasks.generate(c.task, lengths, num, f"{c.seed}:{name}")):
      # The space makes prompt + answer one well-formed text for any tokenizer.
      yield i, self._encode(ex.prompt, " " + ex.answer, length)


def task_sources(data_cfg, tokenizer, task: str) -> dict:
  """{split: tfds ArrayRecordDataSource} for `task`, building it if needed."""
  train_length, test_length = task_lengths(data_cfg, task)
  params = dict(
    task=task,
    train_length=train_length,
    test_length=test_length,
    num_train=data_cfg.num_train,
    num_test=data_cfg.num_test,
    seed=data_cfg.seed,
  )
  name = f"{task}-{builder.digest([params, tokenizer.name])}"
  return builder.prepare(NopejaxTasks, TasksConfig(name=name, **params), tokenizer, data_cfg)


def sources(data_cfg, tokenizer) -> dict:
  """{task: {split: source}} for every task of data.tasks."""
  return {task: task_sources(data_cfg, tokenizer, task) for task in data_cfg.task_names}


def validate(data_cfg) -> None:
  names = data_cfg.task_names
  known = ", ".join(sorted(tasks.TASKS))
  specs.check(names, f"data.tasks: no task given; known: {known}")
  for name in names:
    specs.check(name in tasks.TASKS, f"data.tasks: unknown task {name!r}; known: {known}")
  for key in ("train_length", "test_length"):
    if getattr(data_cfg, key) is not None:
      specs.positive(getattr(data_cfg, key), f"data.{key}")
  if "lego" in names:
    # LEGO names each variable with a distinct letter.
    specs.check(
      max(task_lengths(data_cfg, "lego")) <= len(tasks.LETTERS),
      f"data.test_length: lego supports lengths up to {len(tasks.LETTERS)}",
    )
