"""Late fusion baseline: the dual encoder (CLIP, ALIGN).

  dual_encoder  Z_A = Tf1(Z_A); Z_B = Tf2(Z_B); no token interaction; aligned by a contrastive
                or sigmoid loss on the pooled towers. No joint representation: no matching head.
"""
from __future__ import annotations

from mmjax.fusion.base import FusionDesign, register


@register
class DualEncoder(FusionDesign):
  name = "dual_encoder"
  survey_name = "late fusion baseline"
  formula = "Tf1(Z_A), Tf2(Z_B), aligned by a contrastive loss"
  cost = "O(N_A^2 + N_B^2)"
  multi_stream = True
  towers_are_design = True
  joint_output = False
  projects_towers = False  # towers meet only in the contrastive projections
  independent_streams = True  # MLM tokens are the text tower's own: packing is exact

  def attention_cost(self, n):
    return sum(self.cfg.depth_of(m) * k ** 2 for m, k in n.items())

  def stage_flops(self, n, d, m):
    return 0.0

  def interact(self, module, parts, streams):
    return self.multi_stream_output({m: streams[m][0] for m in module.modalities}, streams,
                             module.modalities)
