"""The length-generalization report: ranks, MRR, and the smoke sweep end to end."""

import importlib.util
import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from nopejax.eval import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
  "lengthgen", os.path.join(ROOT, "configs/lengthgen.py")
)
lengthgen = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(lengthgen)


def test_ranks_share_the_best_rank_on_ties():
  assert report.ranks({"a": 0.9, "b": 0.5, "c": 0.9, "d": 0.1}) == {"a": 1, "b": 3, "c": 1, "d": 4}


def test_mrr_by_hand():
  # Two (task, seed) groups with training length 2: lengths 3 and 4 are beyond it.
  def res(task, ood_em, ood_tok):
    return {
      task: {
        "1": {"exact_match": 1.0, "token_accuracy": 1.0},
        "3": {"exact_match": ood_em, "token_accuracy": ood_tok},
        "4": {"exact_match": ood_em, "token_accuracy": ood_tok},
      }
    }

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
  assert means["nope", "copy"]["sd_token_accuracy"] == pytest.approx(0.35)
  assert "| nope | 1.00 | 0.75 | 0.69 |" in report.markdown(means, mrr)
  # Seed 0 is a tie at 0 exact match (rope shares rank 1 there); only seed 1 separates them.
  groups = report._groups(report.scores(runs, {"copy": 2}))
  assert list(report.informative(groups, ["nope", "rope"])) == [("copy", "1")]
  scored, count = report.mean_reciprocal_ranks(
    report.informative(groups, ["nope", "rope"]), ["nope", "rope"]
  )
  assert (
    count == 1 and scored["nope"]["exact_match"] == 1.0 and scored["rope"]["exact_match"] == 0.5
  )
  text = report.markdown(means, mrr, informative_mrr=(scored, count))
  assert "over the 1 task x seed groups" in text and "| rope | 0.50 |" in text
  assert "No task x seed group" in report.markdown(means, mrr, informative_mrr=({}, 0))


def _results(task, iid_em, ood_tok):
  return {
    task: {
      "1": {"exact_match": iid_em, "token_accuracy": 1.0},
      "3": {"exact_match": 0.0, "token_accuracy": ood_tok},
    }
  }


def _write_run(sweep_dir, name, results):
  run_dir = sweep_dir / name
  (run_dir / "eval").mkdir(parents=True)
  (run_dir / "eval" / "results.json").write_text(json.dumps({name: results}))
  cfg = lengthgen.get_config(name)
  cfg.data.train_length = 2
  (run_dir / "config.json").write_text(cfg.to_json())
  (run_dir / "metrics.jsonl").write_text(
    '{"step": 100, "step_s": 0.5}\n{"step": 100, "val_loss": 1}\n{"step": 300, "step_s": 1.0}\n'
  )
  (run_dir / "eval" / "evaluated.json").write_text('{"step": 300, "eval": {}, "seconds": 30}')


def test_report_ranks_the_paper_schemes_apart_and_counts_only_complete_groups(tmp_path):
  """Hybrids do not change the paper schemes' MRR; a group missing a scheme is not ranked;
  a run that did not fit its training lengths is named."""
  paper, hybrids = tmp_path / "paper", tmp_path / "hybrids"
  scores = {"nope": 0.9, "rope": 0.5, "t5": 0.4, "alibi": 0.3, "abs": 0.1}
  for scheme, tok in scores.items():
    _write_run(paper, f"scheme={scheme},task=copy,seed=0", _results("copy", 1.0, tok))
  _write_run(hybrids, "scheme=smollm3,task=copy,seed=0", _results("copy", 0.5, 0.95))
  _write_run(paper, "scheme=nope,task=copy,seed=1", _results("copy", 1.0, 0.0))  # no seed-1 rest
  text = report.report(*report.load_runs([str(paper), str(hybrids)]))
  assert "ranked among themselves (1 task x seed groups)" in text
  assert "| nope | 1.00 | 1.00 | 0.69 |" in text  # rank 1 of the five
  assert "| rope | 1.00 | 0.50 | 0.33 |" in text
  assert "All schemes ranked together (1 task x seed groups)" in text
  assert "| smollm3 | 1.00 | 1.00 |" in text and "| nope | 1.00 | 0.50 |" in text
  assert "scheme=smollm3,task=copy,seed=0 (0.50)" in text  # below the fit bar
  assert "0.45 ± 0.45 (1.00)" in text  # nope's two seeds: mean, spread, within training
  # 7 x (100 x 0.5 s + 200 x 1.0 s) of steps, 7 x 30 s of evaluation
  assert "Compute: 7 runs, 0.49 h of training steps and 0.06 h of evaluation." in text
  means = report.seed_means(report.load_runs([str(paper)])[0])
  assert means["nope"]["copy"]["3"]["token_accuracy"] == pytest.approx(0.45)
  _write_run(hybrids, "scheme=nope,task=copy,seed=1", _results("copy", 1.0, 0.0))
  with pytest.raises(ValueError, match="run scheme=nope,task=copy,seed=1 is in two sweeps"):
    report.load_runs([str(paper), str(hybrids)])


def test_report_reads_sweeps_from_and_writes_to_a_bucket(gcs_bucket, tmp_path):
  """Sweep directories, the report and its plot all on gs://; no local `gs:` directory."""
  from conftest import no_local_gs_dir

  from nopejax import storage

  local = tmp_path / "local"
  for scheme, tok in {"nope": 0.9, "rope": 0.5}.items():
    _write_run(local, f"scheme={scheme},task=copy,seed=0", _results("copy", 1.0, tok))
  (local / "not_a_run").mkdir()
  sweep = f"{gcs_bucket.url}/sweep"
  storage.copy_tree(local, sweep)
  out, plot_path = f"{gcs_bucket.url}/out/report.md", f"{gcs_bucket.url}/out/report.png"
  text = report.write([sweep], out, plot_path)
  assert "| nope | 1.00 | 1.00 | 0.69 |" in text
  assert "Compute: 2 runs, 0.14 h of training steps and 0.02 h of evaluation." in text
  assert storage.path(out).read_text() == text + "\n"
  assert storage.path(plot_path).stat().length > 10_000
  assert sorted(gcs_bucket.objects("out/")) == ["out/report.md", "out/report.png"]
  with pytest.raises(ValueError, match="no such directory"):
    report.load_runs([f"{gcs_bucket.url}/missing"])
  no_local_gs_dir(tmp_path, ROOT)


def test_report_without_evaluated_runs_says_so(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "nopejax.report", f"--sweep={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1 and "no evaluated runs" in proc.stderr


def test_smoke_sweep_runs_evaluates_and_reports(tmp_path):
  """configs/lengthgen.py:runlocal: the paper's five schemes, seconds each, then the report."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", NOPEJAX_DATA_DIR=str(tmp_path / "data"))
  sweep_dir = tmp_path / "sweep"
  run = lambda *args: subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
  )
  proc = run("nopejax.sweep", "--config=configs/lengthgen.py:runlocal", f"--workdir={sweep_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run(
    "nopejax.report",
    f"--sweep={sweep_dir}",
    f"--out={tmp_path / 'report.md'}",
    f"--plot={tmp_path / 'report.png'}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "report.png").stat().st_size > 10_000
  for scheme in ("nope", "t5", "alibi", "rope", "abs"):
    assert f"| {scheme} |" in proc.stdout
  assert (tmp_path / "report.md").read_text().startswith("The paper's five schemes ranked")
  # Each run was evaluated as it finished; a second sweep call reuses those evaluations.
  cached = [
    sweep_dir / name / "eval" / "results.json"
    for name in os.listdir(sweep_dir)
    if name.startswith("scheme=")
  ]
  assert len(cached) == 5 and all(p.with_name("evaluated.json").exists() for p in cached)
  mtimes = [p.stat().st_mtime_ns for p in cached]
  proc = run("nopejax.sweep", "--config=configs/lengthgen.py:runlocal", f"--workdir={sweep_dir}")
  assert proc.returncode == 0 and proc.stdout.count("finished, skipping") == 5
  assert [p.stat().st_mtime_ns for p in cached] == mtimes
