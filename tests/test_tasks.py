"""The synthetic tasks: answers checked by parsing the text, lengths, determinism."""

import re

import pytest

from nopejax.data import tasks, tokenizers


def _numbers(text: str) -> list[int]:
  """Space-separated digits between operators, e.g. '1 2 + 3' -> [12, 3]."""
  return [int(part.replace(" ", "")) for part in re.split(r" [+] ", text)]


def _list(text: str) -> list[int]:
  return [int(v) for v in re.search(r"\[ (.*) \]", text).group(1).split(" , ")]


def _answer(answer: str) -> str:
  return re.fullmatch(r"The answer is (.*) \.", answer).group(1)


def check_copy(ex, length):
  symbols = re.fullmatch(r"Copy : (.*) \?", ex.prompt).group(1)
  assert len(symbols.split()) == length and ex.answer == symbols


def check_reverse(ex, length):
  symbols = re.fullmatch(r"Reverse : (.*) \?", ex.prompt).group(1).split()
  assert len(symbols) == length and ex.answer.split() == symbols[::-1]


def check_addition(ex, length):
  operands = re.fullmatch(r"Compute (.*) \?", ex.prompt).group(1)
  a, b = _numbers(operands)
  assert max(len(str(a)), len(str(b))) == length
  assert int(_answer(ex.answer).replace(" ", "")) == a + b


def check_parity(ex, length):
  bits = _list(ex.prompt)
  assert len(bits) == length and set(bits) <= {0, 1}
  assert _answer(ex.answer) == ("Yes" if sum(bits) % 2 == 0 else "No")


def check_sort(ex, length):
  values = _list(ex.prompt)
  assert len(values) == length
  assert re.fullmatch(r"The sorted list is \[ .* \] \.", ex.answer)
  assert _list(ex.answer) == sorted(values)


def check_summation(ex, length):
  values = _numbers(re.fullmatch(r"Compute: (.*) \.", ex.prompt).group(1))
  assert len(values) == length and all(0 <= v <= 9 for v in values)
  assert int(_answer(ex.answer)) == sum(values) % 10


def check_polynomial(ex, length):
  x, poly = re.fullmatch(r"Evaluate at x = (\d) in (.*) \?", ex.prompt).groups()
  terms = [re.fullmatch(r"(\d) \* x \*\* (\d)", t).groups() for t in poly.split(" + ")]
  assert len(terms) == length
  assert int(_answer(ex.answer)) == sum(int(c) * int(x) ** int(d) for c, d in terms) % 10


def check_lego(ex, length):
  clauses = re.fullmatch(r"If (.*) , then what is the value of each \?", ex.prompt).group(1)
  rules = dict(re.fullmatch(r"(\w) = ([+-] \w)", c).groups() for c in clauses.split(" ; "))
  assert len(rules) == length

  def value(name):
    sign, ref = rules[name].split()
    v = 1 if ref == "1" else value(ref)
    return v if sign == "+" else -v

  resolved = dict(
    re.fullmatch(r"(\w) = ([+-]) 1", c).groups() for c in _answer(ex.answer).split(" ; ")
  )
  assert resolved == {n: "+" if value(n) > 0 else "-" for n in rules}


CHECKS = {name[len("check_") :]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_task_has_a_check():
  assert set(CHECKS) == set(tasks.TASKS)


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_answers_are_correct_at_every_length(task):
  spec = tasks.TASKS[task]
  for length, ex in tasks.generate(task, list(range(1, spec.test_length + 1)), 300, seed=0):
    CHECKS[task](ex, length)


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_task_vocabulary_covers_every_word(task):
  tok = tokenizers.TaskTokenizer()
  for _, ex in tasks.generate(task, [1, 5, tasks.TASKS[task].test_length], 50, seed=1):
    text = f"{ex.prompt} {ex.answer}"
    assert tok.decode(tok.encode(text)) == text


def test_generation_is_deterministic_in_the_seed():
  assert tasks.generate("addition", [3, 4], 20, seed=7) == tasks.generate(
    "addition", [3, 4], 20, seed=7
  )
  assert tasks.generate("addition", [3, 4], 20, seed=7) != tasks.generate(
    "addition", [3, 4], 20, seed=8
  )


def test_addition_example_format():
  # The paper's format, digits as separate words.
  ((_, ex),) = tasks.generate("addition", [2], 1, seed=0)
  assert re.fullmatch(r"Compute( \d)+ \+( \d)+ \?", ex.prompt)
  assert re.fullmatch(r"The answer is( \d)+ \.", ex.answer)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_needle_sits_at_its_depth(depth):
  ex = tasks.passkey_text(1234, num_fillers=10, depth=depth)
  before = ex.prompt.split(tasks.passkey_needle(1234))[0]
  assert before.count(tasks.PASSKEY_FILLER) == round(10 * depth)
  assert ex.prompt.startswith(tasks.PASSKEY_INTRO)
  assert ex.prompt.endswith(tasks.PASSKEY_QUESTION) and ex.answer == " 1234."
