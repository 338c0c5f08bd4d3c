"""Cross-modal alignment (survey: contrastive alignment): CLIP's InfoNCE and SigLIP's pairwise
sigmoid, on every pair of modalities, from the clean pass's contrastive embeddings."""
from __future__ import annotations

import itertools
import math
from typing import Mapping

import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from mmjax.objectives import base
from mmjax.objectives.losses import contrastive_loss, global_loss, sigmoid_loss

TOWERS_WHY = ("{design} without unimodal towers mixes the modalities before any per-modality "
              "embedding exists (pooled streams of a paired forward have seen their partner), "
              "so there is nothing honest to contrast; set loss_weights.{name}=0 or "
              "model.depth.unimodal > 0")
MULTI_POSITIVE = ("none", "text", "label")


def positive_keys(batch: Mapping, model_cfg, mode: str):
  """The multi-positive keys of `batch` for objectives.multi_positive=`mode` (None for 'none'):
  'label' -> label [B, 1]; 'text' -> the ids of every text modality, concatenated [B, sum L]."""
  if mode == "none":
    return None
  if mode == "label":
    if "label" not in batch:
      raise ValueError("objectives.multi_positive='label' needs a 'label' in every batch; give "
                       "each example a label (JSONL: \"label\": 3) or use 'text'")
    return jnp.asarray(batch["label"]).astype(jnp.int32).reshape(-1, 1)
  if mode == "text":
    text = [m.name for m in model_cfg.modalities if m.kind == "text" and m.name in batch]
    if not text:
      raise ValueError("objectives.multi_positive='text' needs a text modality in the batch; "
                       "use 'label' (with labelled data) or 'none'")
    return jnp.concatenate([jnp.asarray(batch[m]).astype(jnp.int32) for m in text], axis=1)
  raise ValueError(f"unknown objectives.multi_positive={mode!r}; use one of "
                   f"{', '.join(MULTI_POSITIVE)}")


def _multi_positive_contrastive(za, zb, keys, logit_scale_param, *, axis_name=None):
  return contrastive_loss(za, zb, logit_scale_param, keys, axis_name=axis_name)


def pair_name(objective: str, pairs, a: str, b: str) -> str:
  """'contrastive' with one pair of modalities, else 'contrastive_<a>_<b>'."""
  return objective if len(pairs) == 1 else f"{objective}_{a}_{b}"


@base.register
class Contrastive(base.Objective):
  """Symmetric InfoNCE per pair of modalities with a learned, clamped temperature
  (losses.contrastive_loss); objectives.temperature > 0 fixes the scale at 1/temperature;
  objectives.multi_positive 'text' / 'label' makes the targets multi-positive."""
  name = "contrastive"
  survey_name = "contrastive alignment (CLIP)"
  default_head = True
  requires = {"towers": TOWERS_WHY}

  def heads(self, model):
    return {"logit_scale": model.param("logit_scale",
                                       nn.initializers.constant(np.log(1 / 0.07)), ())}

  def outputs(self, model, shared):
    out = {"embeddings": shared.embeddings(),
           "pairs": list(itertools.combinations(model.modalities, 2)),
           "logit_scale": model.logit_scale}
    keys = positive_keys(shared.batch, model.cfg, shared.config.multi_positive)
    if keys is not None:
      out["positive_keys"] = keys
    return out

  def losses(self, outputs, objectives, mesh=None):
    scale, keys = outputs["logit_scale"], outputs.get("positive_keys")
    if objectives.temperature > 0:  # fixed: the learned logit_scale is unused
      scale = jnp.float32(math.log(1.0 / objectives.temperature))
    emb, pairs, out = outputs["embeddings"], outputs["pairs"], {}
    for a, b in pairs:
      fn, arrays = contrastive_loss, (emb[a], emb[b])
      if keys is not None:
        fn, arrays = _multi_positive_contrastive, arrays + (keys,)
      out[pair_name(self.name, pairs, a, b)] = global_loss(fn, mesh, *arrays, scalars=(scale,))
    return out


@base.register
class Sigmoid(base.Objective):
  """SigLIP's pairwise sigmoid loss per pair of modalities, learned temperature and bias
  (losses.sigmoid_loss; a ppermute ring over the batch axes when sharded)."""
  name = "sigmoid"
  survey_name = "contrastive alignment (SigLIP)"
  default_head = True
  requires = {"towers": TOWERS_WHY}

  def heads(self, model):
    return {"t": model.param("sigmoid_t", nn.initializers.constant(np.log(10.0)), ()),
            "b": model.param("sigmoid_b", nn.initializers.constant(-10.0), ())}

  def outputs(self, model, shared):
    heads = model.heads["sigmoid"]
    return {"embeddings": shared.embeddings(),
            "pairs": list(itertools.combinations(model.modalities, 2)),
            "sigmoid_t": heads["t"], "sigmoid_b": heads["b"]}

  def losses(self, outputs, objectives, mesh=None):
    emb, pairs = outputs["embeddings"], outputs["pairs"]
    return {pair_name(self.name, pairs, a, b): global_loss(
        sigmoid_loss, mesh, emb[a], emb[b], scalars=(outputs["sigmoid_t"], outputs["sigmoid_b"]))
            for a, b in pairs}
