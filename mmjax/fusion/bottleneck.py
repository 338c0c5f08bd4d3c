"""MBT attention bottlenecks (Nagrani et al. 2021), the efficiency baseline.

  per fusion layer and modality: [Z_m; B_m] = Tf_m([Z_m; B]);  B = mean_m B_m
Each modality attends only over its own tokens plus B shared bottleneck tokens, so the cost is
O((N_A+B)^2 + (N_B+B)^2) and cross-modal information flows only through the bottleneck.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.fusion.base import FusionDesign, block_flops, register
from mmjax.layers import EncoderBlock, layer_norm


@register
class Bottleneck(FusionDesign):
  name = "bottleneck"
  survey_name = "MBT attention bottlenecks"
  formula = "per layer: [Z_m; B_m] = Tf_m([Z_m; B]), B = mean_m B_m"
  cost = "O((N_A+B)^2 + (N_B+B)^2)"
  multi_stream = True

  def validate(self, modalities):
    super().validate(modalities)
    if self.cfg.num_bottlenecks <= 0:
      raise ValueError("bottleneck fusion needs num_bottlenecks > 0")

  def attention_cost(self, n):
    b = self.cfg.num_bottlenecks
    return self.cfg.joint_depth * sum((k + b) ** 2 for k in n.values())

  def stage_flops(self, n, d, m):
    b = self.cfg.num_bottlenecks
    return self.cfg.joint_depth * sum(block_flops(k + b, d, m) for k in n.values())

  def build(self, module):
    blk, cfg, mods = module.block, self.cfg, module.modalities
    return {
        "init": module.param(
            "bottleneck_tokens", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                              (None, "embed")),
            (cfg.num_bottlenecks, blk.width), blk.param_dtype),
        "layers": [{m: EncoderBlock(blk, name=f"fusion_{i}_{m}") for m in mods}
                   for i in range(cfg.joint_depth)],
        "norm": {m: layer_norm(blk, f"fusion_ln_{m}") for m in mods}}

  def interact(self, module, parts, streams):
    mods, blk = module.modalities, module.block
    b = streams[mods[0]][0].shape[0]
    nb = self.cfg.num_bottlenecks
    btl = jnp.broadcast_to(parts["init"].astype(blk.dtype), (b, nb, blk.width))
    x = {m: streams[m][0] for m in mods}
    ones = jnp.ones((b, nb), bool)
    for layer in parts["layers"]:
      updates = []
      for m in mods:
        y = layer[m](jnp.concatenate([x[m], btl], axis=1),
                     jnp.concatenate([streams[m][1], ones], axis=1))
        x[m] = y[:, :-nb]
        updates.append(y[:, -nb:])
      btl = sum(updates) / len(updates)
    out = {m: parts["norm"][m](x[m]) for m in mods}
    return self.multi_stream_output(out, streams, mods)
