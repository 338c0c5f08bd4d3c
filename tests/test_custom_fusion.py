"""A ninth fusion design, added in this file alone through the registry: it trains with
train.py's loop, evaluates its cost formula, and the fusion benchmark sweeps it."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import fusion, trainer
from mmjax.bench import fusion as bench_fusion
from mmjax.configs import default
from tests.helpers import tiny_config


@fusion.register
class PooledSummary(fusion.FusionDesign):
  """Late interaction of summaries: Z = Tf(C(pool(Tf1(Z_A)), pool(Tf2(Z_B)))), one token per
  modality meets in the joint stream; the towers' tokens are the per-token outputs."""
  name = "pooled_summary"
  survey_name = "toy: pooled late interaction"
  cost = "O(N_A^2 + N_B^2) then O(M^2)"
  towers_are_design = True

  def attention_cost(self, n):
    towers = sum(self.cfg.depth_of(m) * k ** 2 for m, k in n.items())
    return towers + self.cfg.joint_depth * len(n) ** 2

  def stage_flops(self, n, d, m):
    return self.cfg.joint_depth * fusion.block_flops(len(n), d, m)

  def build(self, module):
    return {"joint": fusion.joint_encoder(module)}

  def interact(self, module, parts, streams):
    mods = module.modalities
    summary = {m: (fusion.pool_tokens(t, k, self.cfg.pool)[:, None],
                   jnp.any(k, axis=1, keepdims=True)) for m, (t, k) in streams.items()}
    toks, mask = fusion.concat(summary, mods)
    joint = fusion.pool_tokens(parts["joint"](toks, mask), mask, "mean")
    return {"tokens": {m: streams[m][0] for m in mods},
            "masks": {m: streams[m][1] for m in mods},
            "pooled": {"joint": joint}, "joint": joint}


def test_registered_and_declared():
  assert "pooled_summary" in fusion.names() and "pooled_summary" not in fusion.BUILTIN
  with pytest.raises(ValueError, match="registered twice"):
    fusion.register(type("Other", (fusion.FusionDesign,), {"name": "pooled_summary"}))


def test_trains_with_every_objective(tmp_path):
  cfg = tiny_config("pooled_summary", **{"total_steps": 4, "log_every_steps": 1,
                                         "checkpoint.every_steps": 4})
  out = trainer.train(cfg, str(tmp_path), log_to_stdout=False, devices=jax.devices()[:1])
  assert out["step"] == 4 and out["checkpoint_step"] == 4
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for key in ("contrastive/loss", "itm/loss", "mlm/loss", "mim/loss"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert rows[-1]["loss"] != rows[0]["loss"]


def test_benchmarked_by_the_fusion_sweep(tmp_path):
  res = bench_fusion.run(default.get_config(), str(tmp_path), quick=True,
                         fusions=("pooled_summary", "early_concat"))
  rows = [r for r in res["rows"] if r["fusion"] == "pooled_summary"]
  # Quick mode: N_A = N_B doubling (two points), then N_B alone.
  assert [r["kind"] for r in rows] == ["both", "both", "b_only"], rows
  assert all(r["params"] > 0 for r in rows)
  # The analytic FLOP count (towers + this design's stage_flops) matches XLA's count up to the
  # elementwise work it leaves out (10-12 % at quick mode's width 32: the band
  # test_bench_fusion.py holds every shipped design to), as closely as for a shipped design.
  ref = {(r["n_a"], r["n_b"]): r for r in res["rows"] if r["fusion"] == "early_concat"}
  for r in rows:
    assert 0.87 <= r["analytic_over_xla"] <= 0.96, r
    assert abs(r["analytic_over_xla"] - ref[r["n_a"], r["n_b"]]["analytic_over_xla"]) < 0.02, r
  # Its declared cost formula grows as the attention FLOPs the model really spends (both
  # doubling, and N_B alone).
  grow = lambda r, key: r[key] / rows[0][key]
  for r in rows[1:]:
    assert grow(r, "interaction_attention_flops") == pytest.approx(grow(r, "survey_cost"),
                                                                   rel=0.1), r
  assert os.path.exists(os.path.join(tmp_path, "fusion_scaling.json"))
