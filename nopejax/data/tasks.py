"""Synthetic length-generalization tasks and the passkey prompt, as plain text.

The tasks follow Kazemnejad et al. 2023 (McGill-NLP/length-generalization): the
prompt and answer formats are theirs, with every digit and symbol a separate
word so a word-level vocabulary (`VOCAB`) tokenizes them by splitting on spaces.
A task's *length* is the quantity the paper varies: symbols copied or reversed,
digits per operand for addition, items in the list for the others.

Everything here is pure Python and deterministic given a `random.Random`.
"""

import random
from collections.abc import Callable
from typing import NamedTuple

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
DIGITS = [str(d) for d in range(10)]
# Words of the task prompts and answers, in a fixed order: ids are positions.
WORDS = [
  "Copy",
  "Reverse",
  "Compute",
  "Compute:",
  "Sort",
  "the",
  "following",
  "list",
  "The",
  "answer",
  "is",
  "sorted",
  "Is",
  "number",
  "of",
  "1's",
  "even",
  "in",
  "sequence",
  "Yes",
  "No",
  "Evaluate",
  "at",
  "x",
  "If",
  "then",
  "what",
  "each",
  "value",
  "=",
  "+",
  "-",
  "*",
  "**",
  "?",
  ".",
  ",",
  ":",
  ";",
  "[",
  "]",
]
VOCAB = DIGITS + LETTERS + [w for w in WORDS if w not in LETTERS]

MODULUS = 10  # summation and polynomial answers are taken mod 10, as in the paper


class Example(NamedTuple):
  prompt: str
  answer: str


class Task(NamedTuple):
  make: Callable[[random.Random, int], Example]
  train_length: int  # the paper's L: train on lengths 1..L
  test_length: int  # the paper's largest test length


def _digits(n: int) -> str:
  return " ".join(str(n))


def _random_number(rng: random.Random, num_digits: int) -> int:
  lo = 0 if num_digits == 1 else 10 ** (num_digits - 1)
  return rng.randint(lo, 10**num_digits - 1)


def copy(rng: random.Random, length: int) -> Example:
  symbols = " ".join(rng.choices(LETTERS, k=length))
  return Example(f"Copy : {symbols} ?", symbols)


def reverse(rng: random.Random, length: int) -> Example:
  symbols = rng.choices(LETTERS, k=length)
  return Example(f"Reverse : {' '.join(symbols)} ?", " ".join(symbols[::-1]))


def addition(rng: random.Random, length: int) -> Example:
  # One operand has `length` digits, the other 1..length, in random order.
  a = _random_number(rng, length)
  b = _random_number(rng, rng.randint(1, length))
  if rng.random() < 0.5:
    a, b = b, a
  return Example(f"Compute {_digits(a)} + {_digits(b)} ?", f"The answer is {_digits(a + b)} .")


def parity(rng: random.Random, length: int) -> Example:
  bits = rng.choices([0, 1], k=length)
  answer = "Yes" if sum(bits) % 2 == 0 else "No"
  return Example(
    f"Is the number of 1's even in the sequence [ {' , '.join(map(str, bits))} ] ?",
    f"The answer is {answer} .",
  )


def sort(rng: random.Random, length: int) -> Example:
  values = rng.choices(range(10), k=length)
  return Example(
    f"Sort the following list [ {' , '.join(map(str, values))} ] .",
    f"The sorted list is [ {' , '.join(map(str, sorted(values)))} ] .",
  )


def summation(rng: random.Random, length: int) -> Example:
  values = rng.choices(range(10), k=length)
  return Example(
    f"Compute: {' + '.join(map(str, values))} .", f"The answer is {sum(values) % MODULUS} ."
  )


def polynomial(rng: random.Random, length: int) -> Example:
  # `length` terms c * x ** d with small c, d, x so the words stay single digits.
  x = rng.randint(0, 3)
  terms = [(rng.randint(1, 3), rng.randint(0, 3)) for _ in range(length)]
  poly = " + ".join(f"{c} * x ** {d}" for c, d in terms)
  value = sum(c * x**d for c, d in terms) % MODULUS
  return Example(f"Evaluate at x = {x} in {poly} ?", f"The answer is {value} .")


def lego(rng: random.Random, length: int) -> Example:
  # Zhang et al. 2022's LEGO: a chain of `length` variables, each the previous
  # one or its negation, clauses shuffled; the answer resolves every variable.
  names = rng.sample(LETTERS, k=length)
  signs = [rng.choice("+-") for _ in names]
  clauses = [f"{names[0]} = {signs[0]} 1"]
  clauses += [f"{v} = {s} {u}" for u, v, s in zip(names, names[1:], signs[1:])]
  rng.shuffle(clauses)
  values, value = [], 1
  for name, sign in zip(names, signs):
    value = value if sign == "+" else -value
    values.append(f"{name} = {'+' if value > 0 else '-'} 1")
  return Example(
    f"If {' ; '.join(clauses)} , then what is the value of each ?",
    f"The answer is {' ; '.join(values)} .",
  )


TASKS: dict[str, Task] = {
  "copy": Task(copy, 20, 40),
  "reverse": Task(reverse, 20, 40),
  "addition": Task(addition, 8, 16),
  "parity": Task(parity, 8, 16),
  "sort": Task(sort, 8, 16),
  "summation": Task(summation, 8, 16),
  "polynomial": Task(polynomial, 8, 16),
  "lego": Task(lego, 8, 16),
}


def generate(task: str, lengths: list[int], num: int, seed: int) -> list[tuple[int, Example]]:
  """`num` examples as (length, Example), lengths drawn uniformly from `lengths`."""
  # Seeding with the task name keeps tasks independent of each other's order.
  rng = random.Random(f"{task}:{seed}")
  make = TASKS[task].make
  out = []
  for _ in range(num):
    length = rng.choice(lengths)
    out.append((length, make(rng, length)))
  return out


# Passkey retrieval after Mohtashami and Jaggi 2023 (landmark attention).
PASSKEY_INTRO = (
  "There is an important info hidden inside a lot of irrelevant text. "
  "Find it and memorize them. I will quiz you about the important information there."
)
PASSKEY_FILLER = (
  "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
PASSKEY_QUESTION = "What is the pass key? The pass key is"


def passkey_needle(key: int) -> str:
  return f"The pass key is {key}. Remember it. {key} is the pass key."


def passkey_text(key: int, num_fillers: int, depth: float) -> Example:
  """Prompt with `num_fillers` fillers, the needle after a `depth` fraction of them.

  The answer is ' K.' (leading space, digits, period) so prompt + answer reads as
  the sentence 'The pass key is K.'.
  """
  before = round(depth * num_fillers)
  parts = (
    [PASSKEY_INTRO]
    + [PASSKEY_FILLER] * before
    + [passkey_needle(key)]
    + [PASSKEY_FILLER] * (num_fillers - before)
    + [PASSKEY_QUESTION]
  )
  return Example(" ".join(parts), f" {key}.")
