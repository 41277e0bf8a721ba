"""Every bad input to every entry point is one line naming the flag, key or path (nopejax/cli.py).

Each case runs the real command, which fails while parsing its flags or checking its input,
before anything compiles: seconds each, mostly imports.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/tiny.py"
MISSING = "--config=configs/missing.py"
UNKNOWN_KEY = "--config.model.no_such_key=1"
WRONG_TYPE = "--config.train.steps=abc"

# Lines that are not the command's own: absl's log lines (W0101 12:00:00 ...), Python warnings
# and their indented source lines.
_NOISE = re.compile(r"^(\s|[WIE]\d{4} |WARNING|INFO|.*Warning: )")


def _run(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )


def _error_line(proc, prefix="error: "):
  """The command's one line of stderr, after checking it failed with nothing else said."""
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip() and not _NOISE.match(line)]
  assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr[-3000:]
  return lines[0]


# (module, args, what the line says); `{tmp}` is the test's tmp_path, `{file}` a plain file in it.
CASES = {
  # train
  "train-unknown-key": (
    "nopejax.train",
    [TINY, "--workdir={tmp}/run", UNKNOWN_KEY],
    "error: --config.model.no_such_key: no such config key (model has: ",
  ),
  "train-misspelled-group": (
    "nopejax.train",
    [TINY, "--workdir={tmp}/run", "--config.modle.d_model=8"],
    "error: --config.modle.d_model: no such config key; did you mean --config.model?",
  ),
  "train-key-below-a-value": (
    "nopejax.train",
    [TINY, "--workdir={tmp}/run", "--config.train.steps.every=2"],
    "error: --config.train.steps.every: no such config key (train.steps = 20 holds no keys)",
  ),
  "train-wrong-type": (
    "nopejax.train",
    [TINY, "--workdir={tmp}/run", WRONG_TYPE],
    "error: --config.train.steps: expected int, got 'abc'",
  ),
  "train-missing-config": (
    "nopejax.train",
    [MISSING, "--workdir={tmp}/run"],
    "error: --config: no such file 'configs/missing.py'",
  ),
  "train-missing-config-with-override": (
    "nopejax.train",
    [MISSING, "--workdir={tmp}/run", "--config.train.steps=3"],
    "error: --config: no such file 'configs/missing.py'",
  ),
  "train-bad-config-arg": (
    "nopejax.train",
    ["--config=configs/tiny.py:nosuch=1", "--workdir={tmp}/run"],
    "error: --config=configs/tiny.py:nosuch=1: config arg: unknown key 'nosuch'",
  ),
  "train-unwritable-workdir": (
    "nopejax.train",
    [TINY, "--workdir={file}/run"],
    "error: --workdir: cannot write to '{file}/run'",
  ),
  "train-missing-workdir": (
    "nopejax.train",
    [TINY],
    "error: --workdir: required",
  ),
  "train-unknown-flag": (
    "nopejax.train",
    [TINY, "--workdri={tmp}/run"],
    "error: --workdri: unknown flag; did you mean --workdir?",
  ),
  "train-extra-argument": (
    "nopejax.train",
    [TINY, "--workdir={tmp}/run", "extra"],
    "error: unexpected arguments: ['extra']",
  ),
  # evaluate
  "evaluate-unknown-key": (
    "nopejax.evaluate",
    [TINY, "--workdir={tmp}", "--config.eval.no_such_key=1"],
    "error: --config.eval.no_such_key: no such config key (eval has: ",
  ),
  "evaluate-wrong-type": (
    "nopejax.evaluate",
    [TINY, "--workdir={tmp}", "--config.eval.batch_size=many"],
    "error: --config.eval.batch_size: expected int, got 'many'",
  ),
  "evaluate-missing-config": (
    "nopejax.evaluate",
    [MISSING, "--workdir={tmp}"],
    "error: --config: no such file 'configs/missing.py'",
  ),
  "evaluate-override-without-config": (
    "nopejax.evaluate",
    ["--workdir={tmp}", "--config.eval.kinds=lm"],
    "error: --config.eval.kinds: unknown flag (an override needs --config=FILE)",
  ),
  "evaluate-workdir-without-config-json": (
    "nopejax.evaluate",
    ["--workdir={tmp}/nowhere"],
    "error: --workdir: '{tmp}/nowhere' has no config.json",
  ),
  # sweep: its --config is a path[:arg] string of its own
  "sweep-missing-config": (
    "nopejax.sweep",
    [MISSING, "--workdir={tmp}"],
    "error: --config: no such file 'configs/missing.py'",
  ),
  "sweep-wrong-type": (
    "nopejax.sweep",
    ["--config=configs/lengthgen.py", "--workdir={tmp}", "--evaluate=maybe"],
    "error: --evaluate: expected bool, got 'maybe'",
  ),
  "sweep-bad-launcher": (
    "nopejax.sweep",
    ["--config=configs/lengthgen.py", "--workdir={tmp}", "--launcher=kubernetes"],
    "error: --launcher: value should be one of <local|slurm|print|slurm_task> (got 'kubernetes')",
  ),
  # report
  "report-missing-sweep": (
    "nopejax.report",
    ["--sweep={tmp}/nowhere"],
    "error: --sweep={tmp}/nowhere: no such directory '{tmp}/nowhere'",
  ),
  # bench, bench_data
  "bench-unknown-key": (
    "nopejax.bench",
    ["--config=configs/bench_cpu.py", UNKNOWN_KEY],
    "error: --config.model.no_such_key: no such config key",
  ),
  "bench-wrong-type": (
    "nopejax.bench",
    ["--config=configs/bench_cpu.py", "--steps=abc"],
    "error: --steps: expected int, got 'abc'",
  ),
  "bench-missing-config": (
    "nopejax.bench",
    [MISSING],
    "error: --config: no such file 'configs/missing.py'",
  ),
  "bench_data-unknown-key": (
    "nopejax.bench_data",
    [TINY, "--config.data.no_such_key=1"],
    "error: --config.data.no_such_key: no such config key (data has: ",
  ),
  "bench_data-config-is-a-directory": (
    "nopejax.bench_data",
    ["--config={tmp}"],
    "error: --config: '{tmp}' is a directory, not a config file",
  ),
  # aot
  "aot-unknown-key": (
    "nopejax.aot",
    [TINY, UNKNOWN_KEY],
    "error: --config.model.no_such_key: no such config key",
  ),
  "aot-wrong-type": (
    "nopejax.aot",
    [TINY, WRONG_TYPE],
    "error: --config.train.steps: expected int, got 'abc'",
  ),
  "aot-missing-config": (
    "nopejax.aot",
    [MISSING],
    "error: --config: no such file 'configs/missing.py'",
  ),
  # hf: its lines start with `nopejax.hf`
  "hf-import-missing-hf-dir": (
    "nopejax.hf",
    ["import", "--hf_dir={tmp}/nowhere", "--workdir={tmp}/run"],
    "nopejax.hf import: {tmp}/nowhere/config.json: missing",
  ),
  "hf-import-wrong-dtype": (
    "nopejax.hf",
    ["import", "--hf_dir={tmp}", "--workdir={tmp}/run", "--dtype=float99"],
    "nopejax.hf: --dtype: value should be one of <float32|bfloat16|float16> (got 'float99')",
  ),
  "hf-export-missing-workdir": (
    "nopejax.hf",
    ["export", "--workdir={tmp}/nowhere", "--out={tmp}/out"],
    "nopejax.hf export: {tmp}/nowhere: neither config.json nor model_config.json",
  ),
  "hf-unknown-flag": (
    "nopejax.hf",
    ["export", "--workdir={tmp}", "--outdir={tmp}/out"],
    "nopejax.hf: --outdir: unknown flag",
  ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(tmp_path, case):
  module, args, expected = CASES[case]
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  fill = lambda s: s.format(tmp=tmp_path, file=blocker)
  line = _error_line(_run(module, *map(fill, args)), "nopejax.hf" if "hf" in case else "error: ")
  assert line.startswith(fill(expected)), line
  assert not (tmp_path / "run").exists()  # failed before doing anything


@pytest.mark.parametrize(
  "text,expected",
  [
    ("def get_config(:\n", "SyntaxError: invalid syntax"),
    ("def get_config():\n  return 1 + 'a'\n", "TypeError: unsupported operand"),
    ("x = 1\n", "defines no get_config()"),
  ],
  ids=["syntax-error", "raises", "no-get_config"],
)
def test_config_file_errors_are_one_line(tmp_path, text, expected):
  """A config file that does not parse, raises, or has no get_config: one line, its flag named."""
  path = tmp_path / "config.py"
  path.write_text(text)
  line = _error_line(_run("nopejax.bench_data", f"--config={path}"))
  assert line.startswith("error: --config") and expected in line, line
