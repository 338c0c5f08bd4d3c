"""mmjax.bench.fusion_quality quick mode: every design gets the same training FLOPs (steps are
inversely proportional to FLOPs per step), each evaluated checkpoint is scored, and a rerun
reuses the finished runs instead of training again."""
import json
import os

from mmjax.bench import fusion_quality as fq


def test_plan_matches_budget():
  flops = {"a": 3.0, "b": 7.0}
  out = fq.plan(("a", "b"), 700.0, flops, points=3)
  assert out["a"][0] == 233 and out["b"][0] == 100
  assert out["b"][1] == [34, 68, 100]
  for f, (steps, evals) in out.items():
    assert abs(steps * flops[f] - 700.0) <= flops[f] / 2
    assert evals[-1] == steps and len(evals) == 3


def test_quick_matched_compute(tmp_path):
  out, work = str(tmp_path / "out"), str(tmp_path / "runs")
  logs = []
  res = fq.run(out, work, fusions=("early_concat", "dual_encoder"), reference="early_concat",
               reference_steps=4, points=2, quick=True, log=logs.append)
  rows = {r["fusion"]: r for r in res["rows"]}
  for r in rows.values():
    steps = r["total_steps"]
    assert abs(steps * r["flops_per_step"] - res["budget"]) <= r["flops_per_step"] / 2
    assert [e["step"] for e in r["evals"]][-1] == steps
    for e in r["evals"]:
      for k in ("zero_shot", "i2t_R@10", "t2i_R@1", "itm_pairwise", "itm_group"):
        assert 0.0 <= e[k] <= 1.0, (r["fusion"], k, e)
    assert r["trained_now"] and r["train_s"] > 0
  # No ITM and no fused stream: a dual-encoder step costs less, so it gets more steps.
  assert rows["dual_encoder"]["flops_per_step"] < rows["early_concat"]["flops_per_step"]
  assert rows["dual_encoder"]["total_steps"] > rows["early_concat"]["total_steps"]
  assert rows["early_concat"]["total_steps"] == 4
  assert rows["early_concat"]["evals"][-1]["itm_method"] == "ITM head"
  assert rows["dual_encoder"]["evals"][-1]["itm_method"] == "embedding similarity"
  for name in ("quality.json", "quality.csv", "quality.png", "summary.md"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert "| dual_encoder |" in res["table"] and "| chance |" in res["table"]
  # A rerun finds the finished runs: no training, the same scores.
  again = fq.run(out, work, fusions=("early_concat", "dual_encoder"), reference="early_concat",
                 reference_steps=4, points=2, quick=True, log=logs.append)
  for r in again["rows"]:
    assert not r["trained_now"] and r["train_s"] == rows[r["fusion"]]["train_s"]
    assert r["evals"] == rows[r["fusion"]]["evals"]
  saved = json.load(open(os.path.join(out, "quality.json")))
  assert saved["meta"]["budget_flops"] == res["budget"]


def test_quality_config_adds_describing_objectives_where_the_design_can_train_them():
  from mmjax import configure  # pylint: disable=import-outside-toplevel
  extra = {"caption": 1.0, "prefix_lm": 1.0}
  for name, prefix in (("early_concat", 1.0), ("dual_encoder", 0.0), ("cross_attention", 0.0)):
    c = fq.quality_config(name, quick=True, extra=extra)
    assert c.loss_weights.caption == 1.0 and c.loss_weights.prefix_lm == prefix, name
    assert "caption" in c.eval.evaluators
    heads = configure.resolve(c).model.objective_heads
    assert "caption" in heads and ("prefix_lm" in heads) == bool(prefix)
  assert "caption" not in fq.quality_config("early_concat", quick=True).eval.evaluators
