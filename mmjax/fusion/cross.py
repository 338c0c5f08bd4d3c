"""Cross-attention designs (survey Table 2): streams exchange queries.

  cross_attention  Z_A += MHSA(Q_A, K_B, V_B); Z_B += MHSA(Q_B, K_A, V_A)   (ViLBERT, LXMERT)
  cross_to_concat  the cross-attention streams, then Z = Tf(C(Z_A, Z_B))   (Product1M)

Each stream is updated in place and every stream reads the others' *input* states of the
layer. With three or more modalities a stream's queries attend to the concatenation of all
other streams (TriBERT). model.cross_mode='self_cross' puts a self-attention first (METER,
LXMERT); model.share_cross=True shares one cross-attention between directions (LXMERT).
"""
from __future__ import annotations

import jax.numpy as jnp

from mmjax.fusion.base import (FusionDesign, block_flops, concat, cross_block_flops,
                               joint_encoder, register)
from mmjax.layers import CrossBlock, layer_norm, mha


@register
class CrossAttention(FusionDesign):
  name = "cross_attention"
  survey_name = "cross-attention"
  formula = "Z_A += MHSA(Q_A,K_B,V_B); Z_B += MHSA(Q_B,K_A,V_A)"
  cost = "O(N_A * N_B)"
  multi_stream = True
  exponents = (2, 1)

  def validate(self, modalities):
    super().validate(modalities)
    if self.cfg.cross_mode not in ("pure", "self_cross"):
      raise ValueError(f"unknown cross mode {self.cfg.cross_mode!r}; use 'pure' or "
                       "'self_cross'")

  def attention_cost(self, n):
    total = sum(n.values())
    return self.cfg.cross_depth * sum(k * (total - k) for k in n.values())

  def stage_flops(self, n, d, m):
    total = sum(n.values())
    return self.cfg.cross_depth * sum(
        cross_block_flops(k, total - k, d, m, self.cfg.cross_mode) for k in n.values())

  def build(self, module):
    blk, cfg, mods = module.block, self.cfg, module.modalities
    return {
        "shared": mha(blk, "shared_cross_attn") if cfg.share_cross else None,
        "layers": [{m: CrossBlock(blk, cfg.cross_mode, name=f"cross_{i}_{m}") for m in mods}
                   for i in range(cfg.cross_depth)],
        "norm": {m: layer_norm(blk, f"cross_ln_{m}") for m in mods}}

  def cross(self, module, parts, streams):
    """The co-attention layers: {modality: tokens [B, N_m, D]}, closed by a LayerNorm."""
    mods = module.modalities
    x = {m: streams[m][0] for m in mods}
    for layer in parts["layers"]:
      new = {}
      for m in mods:
        others = [o for o in mods if o != m]
        y = jnp.concatenate([x[o] for o in others], axis=1)
        y_mask = jnp.concatenate([streams[o][1] for o in others], axis=1)
        new[m] = layer[m](x[m], streams[m][1], y, y_mask, parts["shared"])
      x = new  # every stream read the others' input states
    return {m: parts["norm"][m](x[m]) for m in mods}

  def interact(self, module, parts, streams):
    return self.multi_stream_output(self.cross(module, parts, streams), streams, module.modalities)


@register
class CrossToConcat(CrossAttention):
  name = "cross_to_concat"
  survey_name = "cross-attention → concatenation"
  formula = "the cross streams, then Tf(C(Z_A, Z_B))"
  cost = "O(N_A * N_B) then O((N_A+N_B)^2)"
  multi_stream = False
  exponents = (2, 2)

  def attention_cost(self, n):
    return super().attention_cost(n) + self.cfg.joint_depth * sum(n.values()) ** 2

  def stage_flops(self, n, d, m):
    return super().stage_flops(n, d, m) + self.cfg.joint_depth * block_flops(
        sum(n.values()), d, m)

  def build(self, module):
    return {**super().build(module), "joint": joint_encoder(module)}

  def interact(self, module, parts, streams):
    mods = module.modalities
    out = self.cross(module, parts, streams)
    toks, mask = concat({m: (out[m], streams[m][1]) for m in mods}, mods)
    return self.single_stream_output(parts["joint"](toks, mask), mask, streams, mods)
