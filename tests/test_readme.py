"""Every command the README shows is run: here, verbatim but for paths and speed, or by the
test named for it when it needs a checkpoint, a cluster or a GPU this machine does not have."""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Commands that cannot run here as written, and the test that runs their code path instead.
COVERED_ELSEWHERE = {
  "bash launch/demo.sh": "tests/test_sweep.py::test_demo_launcher_runs_a_tiny_sweep_end_to_end",
  "bash launch/test.sh": ".ci/run",
  # Before the one-slice prefix: the first prefix a command starts with names its test.
  "bash launch/tpu_vm.sh --num_slices": (
    "tests/test_launch.py::test_tpu_vm_multislice_dry_run_creates_a_queued_resource"
  ),
  "bash launch/tpu_vm.sh": "tests/test_launch.py::test_tpu_vm_dry_run",
  "sbatch --nodes=2": "tests/test_slurm.py::test_two_tasks_match_one_process",
  "python -m nopejax.sweep --config=configs/lengthgen.py --workdir=/shared/lengthgen "
  "--launcher=slurm": "tests/test_slurm.py::test_sweep_runs_as_a_job_array_and_reports_every_run",
  "bash launch/multiprocess.sh": "tests/test_launch.py::test_two_processes_match_one",
  "bash launch/bench_gpu.sh": (
    "tests/test_bench.py::test_bench_gpu_dry_run_prints_the_bench_command"
  ),
  "python -m nopejax.hf import": "tests/test_hf.py::test_cli_import_then_export_round_trip",
  "python -m nopejax.hf export": "tests/test_hf.py::test_cli_import_then_export_round_trip",
  "python -m nopejax.train --config=configs/smollm3_3b.py": (
    "tests/test_aot.py::test_tiny_compiles_for_v5e_and_fits"
  ),
  "python -m nopejax.train --config=configs/finetune.py": (
    "tests/test_hf.py::test_fine_tuning_from_imported_weights_through_the_train_command"
  ),
  "python -m nopejax.bench_checkpoint": (
    "tests/test_storage.py::test_bench_checkpoint_reports_blocking_times"
  ),
  "python -m nopejax.bench --config=configs/bench_cpu.py --decode": (
    "tests/test_bench.py::test_decode_bench_against_transformers_generate"
  ),
  "python -m nopejax.bench --config=configs/bench_cpu.py": (
    "tests/test_bench.py::test_compare_torch_reports_both_and_the_ratio"
  ),
  "python -m nopejax.bench --config=configs/long_context.py": (
    "tests/test_bench.py::test_long_context_bench_takes_the_flash_path"
  ),
  "python -m nopejax.aot --config=configs/smollm3_3b.py --topology=v5p:2x2x1 --num_slices": (
    "tests/test_aot.py::test_tiny_compiles_for_two_slices"
  ),
  "python -m nopejax.aot --config=configs/smollm3_3b.py:seq_len=65536": (
    "tests/test_aot.py::test_long_sequences_compile_with_context_parallelism_and_bias_layers_on_flash"
  ),
}
# Configs with a `runlocal` variant: the README's runs of them are shrunk to seconds here.
RUNLOCAL = ("configs/text.py", "configs/lengthgen.py")


def readme_commands():
  """(section, command) for every `python -m nopejax.*`, `bash launch/*` or `sbatch` line."""
  text = open(os.path.join(ROOT, "README.md")).read()
  commands, section = [], ""
  for heading, block in re.findall(r"^(## [^\n]*)$|```bash\n(.*?)```", text, re.S | re.M):
    if heading:
      section = heading[3:]
      continue
    for line in re.sub(r"\\\n\s*", "", block).splitlines():
      line = re.sub(r"\s+#.*$", "", line.strip())
      if line.startswith(("python -m nopejax.", "bash launch/", "sbatch ", "JAX_PLATFORMS")):
        commands.append((section, line))
  return commands


def _covered(command):
  return next(
    (
      test
      for prefix, test in COVERED_ELSEWHERE.items()
      if command.replace("JAX_PLATFORMS=cpu ", "").startswith(prefix)
    ),
    None,
  )


def test_every_readme_command_is_run_somewhere():
  commands = readme_commands()
  assert len(commands) > 15
  for _, command in commands:
    test = _covered(command)
    if test is None:
      continue
    path, _, name = test.partition("::")
    source = open(os.path.join(ROOT, path)).read()
    assert not name or f"def {name}(" in source, f"{command!r} claims {test}, which is gone"


def _runnable(section):
  return [c for s, c in readme_commands() if s == section and _covered(c) is None]


def _localize(command, tmp_path):
  """Paths into tmp_path; runlocal for the configs that have it."""
  command = command.replace("JAX_PLATFORMS=cpu ", "")
  command = command.replace("/tmp/", f"{tmp_path}/").replace("runs/", f"{tmp_path}/runs/")
  command = command.replace(
    "docs/results/", f"{tmp_path}/docs/results/"
  )  # never the committed ones
  for config in RUNLOCAL:
    command = re.sub(
      re.escape(config) + r"(:(\S*))?",
      lambda m, config=config: f"{config}:{m.group(2) + ',' if m.group(2) else ''}runlocal",
      command,
    )
  return shlex.split(command)


def _run_section(section, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", NOPEJAX_DATA_DIR=str(tmp_path / "data"))
  commands = _runnable(section)
  assert commands, f"no runnable commands in README section {section!r}"
  for command in commands:
    argv = _localize(command, tmp_path)
    assert argv[:2] == ["python", "-m"], command
    proc = subprocess.run(
      [sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"README command failed: {command}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize(
  "section", ["Commands", "Data", "Evaluation", "Results", "Results, second edition"]
)
def test_readme_section_commands_run(section, tmp_path):
  _run_section(section, tmp_path)
