"""mmjax.bench.fusion quick mode: files written, and the fitted attention-cost exponents match the
survey's per-layer cost of each interaction (they would not if a variant attended over the wrong
tokens, e.g. cross-attention over the concatenation, or early_concat with separate streams)."""
import json
import math
import os

from mmjax import fusion as fusion_lib
from mmjax.bench import fusion, fusion_cost, fusion_report, fusion_sweep
from mmjax.configs import default


def test_fusion_quick_sweep(tmp_path):
  out = str(tmp_path / "fusion")
  res = fusion.run(default.get_config(), out, quick=True,
                   fusions=("early_concat", "cross_attention", "dual_encoder"),
                   log=lambda *a, **k: None, widths=(32, 64), depth_scales=(1, 2), wd_size=16)
  for name in ("fusion_scaling.csv", "fusion_scaling.json", "summary.md", "attention_flops.png",
               "width_depth_flops.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  data = json.load(open(os.path.join(out, "fusion_scaling.json")))
  e = data["exponents"]
  # early_concat: (N_A + N_B)^2 -> doubling both quadruples the cost.
  assert abs(e["early_concat"]["both"] - 2.0) < 0.05, e
  # cross_attention: N_A * N_B -> linear in one modality (quadratic would be ~1.8 here).
  assert abs(e["cross_attention"]["n_b"] - 1.0) < 0.05, e
  assert abs(e["cross_attention"]["both"] - 2.0) < 0.05, e
  # dual_encoder: N_A^2 + N_B^2 -> the N_B-alone slope is that of the survey's formula at these N.
  survey = data["exponents_survey_formula_at_these_n"]
  for f in e:
    for k in ("both", "n_b"):
      assert math.isclose(e[f][k], survey[f][k], abs_tol=0.05), (f, k, e[f], survey[f])
  assert data["survey_cost"]["cross_attention"] == fusion_lib.get("cross_attention").cost
  assert data["survey_exponent"]["cross_attention"] == [2, 1]
  rows = [r for r in data["rows"] if r["fusion"] == "early_concat"]
  assert all(r["params"] > 0 and r["forward_flops"] > r["attention_flops"] > 0 for r in rows)
  assert "| early_concat |" in res["table"]
  # Elementwise work (norms, softmax, GELU) is the part of XLA's count the matmul formula
  # leaves out: 10-12 % at width 32, 5 % at width 64 (tight band: the test below).
  for r in data["rows"]:
    assert 0.87 <= r["analytic_over_xla"] <= 0.96, (r["fusion"], r["kind"],
                                                    r["analytic_over_xla"])
  # Width: params ~ D^2 (+ embeddings ~ D), FLOPs ~ D^2 (+ attention core ~ N^2 D);
  # depth: attention FLOPs exactly proportional to the layer count.
  for f, s in data["exponents_width_depth"].items():
    assert 1.4 < s["params_width"] < 2.0 and 1.6 < s["forward_flops_width"] < 2.0, (f, s)
    assert abs(s["attention_flops_width"] - 1.0) < 1e-6, (f, s)
    assert abs(s["attention_flops_depth"] - 1.0) < 1e-6, (f, s)


def test_analytic_flops_every_fusion():
  """analytic_forward_flops matches XLA's count of the forward up to elementwise work, which
  is 10-12 % at width 32 (measured: 0.880 cross_attention ... 0.901 early_sum). At these
  unequal lengths (17 image tokens with [CLS], 48 text) the band excludes, e.g.: early_concat's
  joint stream over N_A alone (0.52) or as two separate streams (0.84), early_sum on the
  shorter length (0.63) or on the concatenation (1.09), cross_attention with keys over the
  concatenation (1.07) or self- instead of cross-attention (0.92), bottleneck without its 4
  tokens (0.84), hier_one_to_multi without its post stage (0.61), a missing tower (<= 0.83)."""
  for f in fusion_lib.BUILTIN:
    cfg = fusion_sweep.sweep_config(default.get_config(), f, 16, 48, quick=True, batch_size=2)
    r = fusion_sweep.measure(cfg, steps=1, train=False)
    assert (r["n_a"], r["n_b"]) == (17, 48), r
    assert 0.87 <= r["analytic_over_xla"] <= 0.91, (f, r["analytic_over_xla"])


def test_survey_cost_formula():
  """The row's survey cost is the design's own attention_cost at the config's stage depths."""
  c = default.get_config()
  c.model.depth.update({"unimodal": 1, "joint": 2, "post": 0, "cross": 3})
  n = {"image": 10, "text": 20}
  c.model.fusion = "early_concat"
  assert fusion_cost.survey_cost(c, n) == 2 * 900
  c.model.fusion = "cross_attention"
  assert fusion_cost.survey_cost(c, n) == 3 * 2 * 200
  assert abs(fusion_report.slope([1, 2, 4], [3, 12, 48]) - 2) < 1e-9


def test_loss_weights_valid_for_the_design():
  """A design without a shipped config keeps the base's loss weights less those it cannot
  serve: no itm without a joint output, no alignment loss without unimodal towers."""
  c = default.get_config()
  c.model.fusion = "dual_encoder"
  fusion_sweep.valid_loss_weights(c)
  assert c.loss_weights.itm == 0 and c.loss_weights.contrastive == 1.0
  c = default.get_config()
  c.model.fusion = "early_concat"
  c.model.depth.unimodal = 0
  fusion_sweep.valid_loss_weights(c)
  assert c.loss_weights.contrastive == 0 and c.loss_weights.itm == 1.0
