"""Hierarchical attention (survey Table 2): per-stream and joint stages in sequence.

  hier_multi_to_one  Z = Tf3(C(Tf1(Z_A), Tf2(Z_B)))       Tf1, Tf2 = the unimodal towers
                                                           (FACT, FLAVA, ALBEF in spirit)
  hier_one_to_multi  (Z_A, Z_B) = split(Tf1(C(Z_A, Z_B))); Z_A = Tf2(Z_A); Z_B = Tf3(Z_B)
                                                           (InterBERT)
"""
from __future__ import annotations

from mmjax.fusion.base import (FusionDesign, block_flops, concat, joint_encoder, register,
                               split)
from mmjax.fusion.early import EarlyConcat
from mmjax.layers import Encoder


@register
class HierMultiToOne(EarlyConcat):
  """early_concat's joint stream, after towers that are part of the design."""
  name = "hier_multi_to_one"
  survey_name = "hierarchical multi→one"
  formula = "Tf3(C(Tf1(Z_A), Tf2(Z_B)))"
  cost = "O(N_A^2 + N_B^2) then O((N_A+N_B)^2)"
  towers_are_design = True

  def attention_cost(self, n):
    towers = sum(self.cfg.depth_of(m) * k ** 2 for m, k in n.items())
    return towers + super().attention_cost(n)


@register
class HierOneToMulti(FusionDesign):
  name = "hier_one_to_multi"
  survey_name = "hierarchical one→multi"
  formula = "split(Tf1(C(Z_A,Z_B))), then Tf2, Tf3 per stream"
  cost = "O((N_A+N_B)^2) then O(N_A^2 + N_B^2)"
  multi_stream = True

  def attention_cost(self, n):
    cfg = self.cfg
    return cfg.joint_depth * sum(n.values()) ** 2 + cfg.post_depth * sum(k * k for k in n.values())

  def stage_flops(self, n, d, m):
    return (self.cfg.joint_depth * block_flops(sum(n.values()), d, m)
            + self.cfg.post_depth * sum(block_flops(k, d, m) for k in n.values()))

  def build(self, module):
    return {"joint": joint_encoder(module),
            "post": {m: Encoder(module.block, self.cfg.post_depth, name=f"post_{m}")
                     for m in module.modalities}}

  def interact(self, module, parts, streams):
    mods = module.modalities
    toks, mask = concat(streams, mods)
    mixed = split(parts["joint"](toks, mask), streams, mods)
    module.sow("intermediates", "stage1", mixed)
    out = {m: parts["post"][m](mixed[m], streams[m][1]) for m in mods}
    return self.multi_stream_output(out, streams, mods)
