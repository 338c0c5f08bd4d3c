"""Early fusion (survey Table 2): the modalities meet before the first joint layer.

  early_sum     Z = Tf(sum_m a_m * Z_m)    token-wise; aligned tokens of equal length (or
                                           model.early_sum_align='pad'); a_m fixed 1 or learned
  early_concat  Z = Tf(C(Z_A, Z_B))        single stream ("all-attention": VisualBERT, ViLT)
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from mmjax.fusion.base import (FusionDesign, block_flops, concat, joint_encoder, register)


@register
class EarlySum(FusionDesign):
  name = "early_sum"
  survey_name = "early summation"
  formula = "Tf(a·Z_A + b·Z_B); a, b fixed or learned"
  cost = "O(N^2), N = N_A = N_B"
  position_aligned = True

  def validate(self, modalities):
    super().validate(modalities)
    cfg = self.cfg
    if cfg.early_sum_align not in ("none", "pad"):
      raise ValueError(f"unknown early_sum_align {cfg.early_sum_align!r}; use 'none' or 'pad'")
    if cfg.early_sum_weights not in ("fixed", "learned"):
      raise ValueError(f"unknown early_sum_weights {cfg.early_sum_weights!r}; "
                       "use 'fixed' or 'learned'")

  def validate_lengths(self, lengths):
    if len(set(lengths.values())) > 1 and self.cfg.early_sum_align != "pad":
      raise ValueError(
          f"early_sum needs aligned tokens of equal length, got {dict(lengths)}; use "
          "time-aligned inputs or set model.early_sum_align='pad' (pad to the longest, masks "
          "OR-ed)")

  def attention_cost(self, n):
    return self.cfg.joint_depth * max(n.values()) ** 2

  def stage_flops(self, n, d, m):
    return self.cfg.joint_depth * block_flops(max(n.values()), d, m)

  def build(self, module):
    parts = {"joint": joint_encoder(module)}
    if self.cfg.early_sum_weights == "learned":
      parts["sum_weights"] = module.param("sum_weights", nn.initializers.ones,
                                          (len(module.modalities),))
    return parts

  def interact(self, module, parts, streams):
    mods = module.modalities
    lengths = {m: streams[m][0].shape[1] for m in mods}
    self.validate_lengths(lengths)
    n = max(lengths.values())
    weights = parts.get("sum_weights", jnp.ones((len(mods),)))
    total, mask = 0.0, None
    for i, m in enumerate(mods):
      t, k = streams[m]
      pad = n - t.shape[1]
      t = jnp.pad(t, ((0, 0), (0, pad), (0, 0)))
      k = jnp.pad(k, ((0, 0), (0, pad)))
      total = total + weights[i].astype(t.dtype) * t * k[..., None].astype(t.dtype)
      mask = k if mask is None else mask | k
    out = parts["joint"](total, mask)
    res = self.single_stream_output(out, mask, None, mods)
    res["tokens"] = {m: out for m in mods}
    res["masks"] = {m: mask for m in mods}
    return res


@register
class EarlyConcat(FusionDesign):
  name = "early_concat"
  survey_name = "early concatenation"
  formula = "Tf(C(Z_A, Z_B))"
  cost = "O((N_A+N_B)^2)"

  def attention_cost(self, n):
    return self.cfg.joint_depth * sum(n.values()) ** 2

  def stage_flops(self, n, d, m):
    return self.cfg.joint_depth * block_flops(sum(n.values()), d, m)

  prefix_lm = True

  def build(self, module):
    return {"joint": joint_encoder(module)}

  def interact(self, module, parts, streams, positions=None):
    """positions {m: [B, N_m]} (prefix-LM), concatenated like the tokens; absent ones are 0."""
    toks, mask = concat(streams, module.modalities)
    pos = None
    if positions is not None:
      pos = jnp.concatenate([positions[m] if m in positions else
                             jnp.zeros(streams[m][1].shape, jnp.int32)
                             for m in module.modalities], axis=1)
    return self.single_stream_output(parts["joint"](toks, mask, None, pos), mask, streams,
                                     module.modalities)
