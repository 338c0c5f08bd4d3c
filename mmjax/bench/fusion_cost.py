"""The fusion sweep's analytic cost model: matmul FLOPs of a forward, and the survey's cost.

Nothing here names a design: the interaction stages are `design.stage_flops`, the survey's
per-layer cost is `design.attention_cost` (both declared by each registered FusionDesign,
mmjax/fusion/), and whether the towers belong to the design is `design.towers_are_design`.
Token counts `n` map each modality to its tokens ([CLS] included), in the model's order.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mmjax.config_lib import ModelConfig
from mmjax.configure import resolve_model
from mmjax.fusion import block_flops, design_of
from mmjax.tokenizers import PATCH_KINDS


def embed_tower_flops(model: ModelConfig, n: Mapping[str, float]) -> float:
  """Per-modality matmul FLOPs per example before any interaction. At the modality's tower
  width d_m (model width D, MLP M unless the modality sets its own): the patch projection
  2 (n_m - [CLS]) P d_m (P = values per patch; text is a gather: 0), the tower's layers
  block_flops(n_m, d_m, M_m) each, and 2 n_m d_m D where tower_proj maps d_m to D."""
  design, d = design_of(model), model.block.width
  f = 0.0
  for mod in model.modalities:
    tb, k = mod.tower or model.block, n[mod.name]
    if mod.kind in PATCH_KINDS:
      patches = k - (1 if mod.option("add_cls") else 0)
      f += 2 * patches * (int(np.prod(mod.input_shape)) // patches) * tb.width
    elif mod.kind != "text":
      raise ValueError(f"analytic_forward_flops: no count for modality kind {mod.kind!r}")
    f += model.fusion.depth_of(mod.name) * block_flops(k, tb.width, tb.mlp_dim)
    if tb.width != d and design.projects_towers:
      f += 2 * k * tb.width * d
  return f


def analytic_forward_flops(config, n: Mapping[str, float]) -> float:
  """Matmul FLOPs (2 per multiply-add) of model.apply (embed + encode + interact, no heads)
  per example: embed_tower_flops, then the design's interaction stages, design.stage_flops
  at model width and MLP width. `config`: a ConfigDict, Config or ModelConfig."""
  model = resolve_model(config)
  blk = model.block
  return float(embed_tower_flops(model, n) + design_of(model).stage_flops(n, blk.width, blk.mlp_dim))


def survey_cost(config, n: Mapping[str, float]) -> float:
  """The survey's per-layer attention cost of the config's design as a formula of the token
  counts, weighted by its stage depths (design.attention_cost)."""
  return float(design_of(resolve_model(config)).attention_cost(n))


def interaction_attention_flops(design, by_path: Mapping[str, float]) -> float:
  """Attention-core FLOPs of the design: every sown path, less the unimodal towers (`tower_*`)
  unless they are the design's own stages (design.towers_are_design)."""
  total = sum(by_path.values())
  if design.towers_are_design:
    return total
  return total - sum(v for k, v in by_path.items() if "'tower_" in k)
