"""The fusion grid: seed statistics that only order separated designs, and the grid runner
(cached per design, budget and seed, filled over several invocations) through its CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np

from mmjax.bench import seed_stats
from tests.helpers import run_entry


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_seeds():
  rng = np.random.default_rng(0)
  few, many = rng.normal(0.6, 0.05, 5), rng.normal(0.6, 0.05, 80)
  a, b = seed_stats.summarize(few), seed_stats.summarize(many)
  assert a["lo"] <= a["mean"] <= a["hi"] and a["min"] <= a["lo"] and a["hi"] <= a["max"]
  assert b["hi"] - b["lo"] < a["hi"] - a["lo"]
  np.testing.assert_allclose(a["std"], np.std(few, ddof=1))
  assert seed_stats.summarize([float("nan")]) == {"n": 0}


def test_only_separated_designs_are_ordered_and_rank_ranges_show_ties():
  cells = {"top": seed_stats.summarize([0.90, 0.91, 0.92, 0.90, 0.91]),
           "mid_a": seed_stats.summarize([0.70, 0.75, 0.72, 0.71, 0.74]),
           "mid_b": seed_stats.summarize([0.71, 0.73, 0.76, 0.70, 0.73]),
           "low": seed_stats.summarize([0.50, 0.52, 0.51, 0.49, 0.50])}
  assert seed_stats.separated(cells["top"], cells["mid_a"])
  assert not seed_stats.separated(cells["mid_a"], cells["mid_b"])
  ranks = seed_stats.rank_ranges(cells)
  assert ranks == {"top": (1, 1), "mid_a": (2, 3), "mid_b": (2, 3), "low": (4, 4)}
  need = seed_stats.seeds_needed(cells["mid_a"], cells["mid_b"])
  a, b = cells["mid_a"], cells["mid_b"]
  assert need == math.ceil((1.96 * (a["std"] + b["std"]) / abs(a["mean"] - b["mean"])) ** 2)
  assert need > 5


def test_log_curve_fit_recovers_the_slope():
  x = [1e12, 1e13, 1e14]
  a, b = seed_stats.fit_log_curve(x, [0.3 + 0.1 * np.log10(v) for v in x])
  np.testing.assert_allclose([a, b], [0.3, 0.1], atol=1e-9)


# over 60 s: three invocations of the grid (two train one quick run each and evaluate it with
# the five evaluators, robustness included; the third only reports), then the GPU script's
# dry run on the cached runs; 55-90 s on 2 cores.
def test_grid_fills_over_invocations_and_reports_from_the_cache(tmp_path):
  base = ["-m", "mmjax.bench.fusion_grid", "--quick", "--designs=dual_encoder,cross_attention",
          "--budgets_pflops=0.000001", "--seeds=0", f"--workdir={tmp_path / 'runs'}",
          f"--out={tmp_path / 'r'}"]
  first = run_entry(base + ["--max_runs=1"])
  assert first.returncode == 0, first.stderr[-3000:]
  assert "1 of 2 cells done (1 trained now)" in first.stdout
  second = run_entry(base + ["--max_runs=1"])
  assert "2 of 2 cells done (1 trained now)" in second.stdout, second.stdout[-2000:]
  third = run_entry(base + ["--report_only"])
  assert "2 of 2 cells done (0 trained now)" in third.stdout
  grid = json.loads((tmp_path / "r" / "grid.json").read_text())
  assert {r["design"] for r in grid["runs"]} == {"dual_encoder", "cross_attention"}
  for r in grid["runs"]:
    res = r["results"]
    assert abs(r["train_flops"] - 1e9) <= 0.5 * r["flops_per_step"]  # the matched budget
    assert 0 <= res["minimal_pairs/attribute_swap_accuracy"] <= 1
    assert "robustness/image_absent/zero_shot/accuracy" in res
  methods = {r["design"]: r["results"]["minimal_pairs/method"] for r in grid["runs"]}
  assert methods == {"dual_encoder": "embedding similarity", "cross_attention": "ITM head"}
  summary = (tmp_path / "r" / "summary.md").read_text()
  assert "minimal pairs: argument swap" in summary and "| dual_encoder | 1 |" in summary
  assert (tmp_path / "r" / "quality_vs_flops.png").stat().st_size > 0
  # bench/fusion_grid_gpu.sh's dry run is this grid: with OUT here, it finds both runs cached
  # and writes its report
  env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, OUT=str(tmp_path))
  p = subprocess.run(["bash", "bench/fusion_grid_gpu.sh"], env=env, capture_output=True,
                     text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert p.returncode == 0 and "grid: exit 0" in p.stdout, p.stdout + p.stderr
  assert "2 of 2 cells done (0 trained now)" in p.stdout, p.stdout
  assert (tmp_path / "report" / "summary.md").exists()
