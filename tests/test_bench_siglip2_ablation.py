"""mmjax.bench.siglip2_ablation --quick: the SigLIP 2 arms train at matched model FLOPs (the
full arm's two phases counted) on the scenes and the digits, are evaluated by the region
evaluators, and a second invocation reuses every run."""
import json
import os

from tests.helpers import run_entry


# over 60 s: four runs are trained and evaluated (the full arm compiles two step programs,
# with crops and the EMA teacher; the digits set is written first) and the bench is invoked
# twice; 55-115 s on 2 CPU cores.
def test_quick_ablation_matches_flops_switches_phase_and_resumes(tmp_path):
  work, out = tmp_path / "runs", tmp_path / "out"
  args = ["-m", "mmjax.bench.siglip2_ablation", "--quick", "--seeds=0", "--arms=siglip,full",
          f"--workdir={work}", f"--out={out}"]
  r = run_entry(args)
  assert r.returncode == 0, r.stderr[-3000:]
  saved = json.load(open(out / "results.json"))
  assert set(saved["datasets"]) == {"scenes", "digits"}
  for d, plan in saved["datasets"].items():
    budget = plan["budget_flops"]
    for arm, p in plan["arms"].items():
      assert abs(p["total_flops"] - budget) <= 0.05 * budget, (d, arm, p["total_flops"], budget)
    assert plan["arms"]["siglip"]["steps"] > plan["arms"]["full"]["steps"]  # cheaper steps
  runs = {(x["workdir"].split(os.sep)[-3], x["arm"]): x for x in saved["runs"]}
  assert len(runs) == 4
  for d in ("scenes", "digits"):
    phase = runs[d, "full"]["phase"]
    assert phase["switched"] and phase["start"] == saved["datasets"][d]["arms"]["full"][
        "late_start"], phase
    assert runs[d, "siglip"]["phase"] is None
    full, base = runs[d, "full"]["results"], runs[d, "siglip"]["results"]
    assert 0.0 <= full["referring/accuracy"] <= 1.0 and "grounded_caption/cider" in full
    assert "LocCa" in base["referring/skipped"]  # SigLIP alone has no decoder to ask
    assert 0.0 <= base["zero_shot/accuracy"] <= 1.0
  assert 0.0 <= runs["scenes", "siglip"]["results"]["dense_probe/object_accuracy"] <= 1.0
  assert "pixel_labels" in runs["digits", "full"]["results"]["dense_probe/skipped"]
  summary = (out / "summary.md").read_text()
  assert "## scenes" in summary and "## digits" in summary and "Machine:" in summary
  assert "| full |" in summary and ("inside the noise" in summary or "separate" in summary)
  # A second invocation finds every run finished: nothing retrains.
  again = run_entry(args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count(": cached (") == 4, again.stdout[-2000:]
  assert "trained" not in again.stdout
  assert json.load(open(out / "results.json"))["runs"] == saved["runs"]
