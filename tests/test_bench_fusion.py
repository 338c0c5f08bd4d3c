"""mmjax.bench.fusion quick mode: files written, and the fitted attention-cost exponents match the
cost SPEC section 2 gives each interaction (they would not if a variant attended over the wrong
tokens, e.g. cross-attention over the concatenation, or early_concat with separate streams)."""
import json
import math
import os

from configs import default
from mmjax.bench import fusion


def test_fusion_quick_sweep(tmp_path):
  out = str(tmp_path / "fusion")
  res = fusion.run(default.get_config(), out, quick=True,
                   fusions=("early_concat", "cross_attention", "dual_encoder"),
                   log=lambda *a, **k: None)
  for name in ("fusion_scaling.csv", "fusion_scaling.json", "summary.md", "attention_flops.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  data = json.load(open(os.path.join(out, "fusion_scaling.json")))
  e = data["exponents"]
  # early_concat: (N_A + N_B)^2 -> doubling both quadruples the cost.
  assert abs(e["early_concat"]["both"] - 2.0) < 0.05, e
  # cross_attention: N_A * N_B -> linear in one modality (quadratic would be ~1.8 here).
  assert abs(e["cross_attention"]["n_b"] - 1.0) < 0.05, e
  assert abs(e["cross_attention"]["both"] - 2.0) < 0.05, e
  # dual_encoder: N_A^2 + N_B^2 -> the N_B-alone slope is that of the SPEC formula at these N.
  spec = data["exponents_spec_formula_at_these_n"]
  for f in e:
    for k in ("both", "n_b"):
      assert math.isclose(e[f][k], spec[f][k], abs_tol=0.05), (f, k, e[f], spec[f])
  rows = [r for r in data["rows"] if r["fusion"] == "early_concat"]
  assert all(r["params"] > 0 and r["forward_flops"] > r["attention_flops"] > 0 for r in rows)
  assert "| early_concat |" in res["table"]


def test_spec_cost_formula():
  d = {"unimodal": 1, "joint": 2, "post": 0, "cross": 3}
  assert fusion.spec_cost("early_concat", 10, 20, d) == 2 * 900
  assert fusion.spec_cost("cross_attention", 10, 20, d) == 3 * 2 * 200
  assert fusion.slope([1, 2, 4], [3, 12, 48]) == 2.0 or abs(fusion.slope([1, 2, 4],
                                                                        [3, 12, 48]) - 2) < 1e-9
