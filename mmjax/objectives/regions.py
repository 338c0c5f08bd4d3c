"""Masked region modelling (survey: UNITER's MRC-kl and MRFR): regions masked in the shared
masked pass; heads classify them against the detector and regress their features."""
from __future__ import annotations

import jax.numpy as jnp

from mmjax.objectives import base
from mmjax.objectives.losses import mrc_loss, mrfr_loss


def _regions(model):
  return [m for m in model.modalities if m.kind == "regions"]


def check_regions(which: str, model) -> None:
  if not _regions(model):
    raise ValueError(f"loss_weights.{which} (masked region modelling) needs a regions "
                     f"modality; the model has { {m.name: m.kind for m in model.modalities} }; "
                     f"set loss_weights.{which}=0")


def masked_region_tokens(model, shared, modality: str):
  """(region tokens [B, N, D] of the masked pass, the region batch entry, weights [B, N])."""
  x, mk = shared.batch[modality], shared.masked()
  start = base.stream_start(model, modality)
  tokens = shared.masked_tokens()[modality][:, start:start + x["features"].shape[1]]
  return tokens, x, mk.masks[modality].astype(jnp.float32)


class RegionHeads(base.Objective):
  """One Dense head per regions modality, `<name>_head_<m>` with head_features(m) outputs,
  applied to the masked pass's region tokens; the target is target(m, region batch entry)."""
  masks = ("regions",)
  loss = None  # the per-region loss of losses.py

  def head_features(self, m) -> int:
    raise NotImplementedError

  def target(self, m: str, x):
    raise NotImplementedError

  def check(self, model, objectives):
    check_regions(self.name, model)

  def heads(self, model):
    return {"head": {m.name: base.dense(model, self.head_features(m),
                                        f"{self.name}_head_{m.name}")
                     for m in _regions(model.cfg)}}

  def init(self, model, batch, encoded, out):
    for m, head in model.heads[self.name]["head"].items():
      head(out["tokens"][m])

  def outputs(self, model, shared):
    out = {}
    for m, head in model.heads[self.name]["head"].items():
      tokens, x, w = masked_region_tokens(model, shared, m)
      out[m] = (head(tokens).astype(jnp.float32), self.target(m, x), w)
    return out

  def losses(self, outputs, objectives, mesh=None):
    return base.per_modality(self.name, outputs, type(self).loss)


@base.register
class MaskedRegionClassification(RegionHeads):
  """KL(detector's class distribution || head) on masked regions (losses.mrc_loss)."""
  name = "mrc"
  survey_name = "masked region classification (UNITER MRC-kl)"
  loss = mrc_loss

  def check(self, model, objectives):
    super().check(model, objectives)
    regions = _regions(model)
    if any(m.region_classes < 2 for m in regions):
      raise ValueError(f"loss_weights.mrc needs model.modalities.{regions[0].name}."
                       "region_classes (the detector's number of classes, e.g. 1601)")

  def head_features(self, m):
    return m.region_classes

  def target(self, m, x):
    if "label_dist" not in x:
      raise ValueError(f"loss_weights.mrc needs the detector's class distribution "
                       f"batch['{m}']['label_dist'] [B, N, C]; give it or set mrc=0")
    return x["label_dist"]


@base.register
class MaskedRegionFeatureRegression(RegionHeads):
  """Mean squared error to the masked regions' detector features (losses.mrfr_loss)."""
  name = "mrfr"
  survey_name = "masked region feature regression (UNITER MRFR)"
  loss = mrfr_loss

  def head_features(self, m):
    return m.feature_dim

  def target(self, m, x):
    return x["features"]
