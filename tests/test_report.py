"""The length-generalization report: ranks, MRR, and the smoke sweep end to end."""

import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from nopejax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ranks_share_the_best_rank_on_ties():
  assert report.ranks({"a": 0.9, "b": 0.5, "c": 0.9, "d": 0.1}) == {"a": 1, "b": 3, "c": 1, "d": 4}


def test_mrr_by_hand():
  # Two (task, seed) groups with training length 2: lengths 3 and 4 are beyond it.
  def res(task, ood_em, ood_tok):
    return {task: {"1": {"exact_match": 1.0, "token_accuracy": 1.0},
                   "3": {"exact_match": ood_em, "token_accuracy": ood_tok},
                   "4": {"exact_match": ood_em, "token_accuracy": ood_tok}}}
  runs = {
      "scheme=nope,task=copy,seed=0": res("copy", 0.0, 0.9),
      "scheme=rope,task=copy,seed=0": res("copy", 0.0, 0.3),
      "scheme=nope,task=copy,seed=1": res("copy", 0.5, 0.2),
      "scheme=rope,task=copy,seed=1": res("copy", 0.0, 0.4),
  }
  means, mrr = report.summarize(runs, {"copy": 2})
  assert mrr["nope"] == {"exact_match": 1.0, "token_accuracy": 0.75}  # ranks 1,1 and 1,2
  assert mrr["rope"] == {"exact_match": 0.75, "token_accuracy": 0.75}  # ranks 1,2 and 2,1
  assert means["nope", "copy"]["token_accuracy"] == pytest.approx(0.55)
  assert means["nope", "copy"]["iid_exact_match"] == 1.0
  assert "| nope | 1.00 | 0.75 | 0.69 |" in report.markdown(means, mrr)


def test_smoke_sweep_runs_evaluates_and_reports(tmp_path):
  """configs/lengthgen.py:runlocal: the paper's five schemes, seconds each, then the report."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", NOPEJAX_DATA_DIR=str(tmp_path / "data"))
  sweep_dir = tmp_path / "sweep"
  run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=900)
  proc = run("nopejax.sweep", "--config=configs/lengthgen.py:runlocal", f"--workdir={sweep_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run("nopejax.report", f"--sweep={sweep_dir}", f"--out={tmp_path / 'report.md'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for scheme in ("nope", "t5", "alibi", "rope", "abs"):
    assert f"| {scheme} |" in proc.stdout
  assert (tmp_path / "report.md").read_text().startswith("| scheme | MRR (exact match)")
