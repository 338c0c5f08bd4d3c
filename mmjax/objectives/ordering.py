"""Ordering (survey: frame order modelling, sentence ordering): one pass over a batch whose
video tubelet groups and text segments are shuffled (mmjax.ordering); each head predicts the
original index of every group / token."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax import ordering, tokenizers
from mmjax.objectives import base
from mmjax.objectives.losses import order_loss


def shuffled_pass(model, shared):
  """(tokens {m: [B, N, D]} of the model on the shuffled batch, frame targets {m: (perm [B, G],
  shuffled [B, G] float)}, text targets {m: (targets [B, L], weights [B, L])}) for the active
  ordering objectives; streams fold_in(rng, 13) then fold_in(i) (video) / (50 + i) (text)."""
  rng, active = jax.random.fold_in(shared.rng, 13), shared.active
  batch, shuffled = shared.batch, dict(shared.batch)
  frames, texts = {}, {}
  heads = model.heads
  for i, m in enumerate(heads["frame_order"]["head"] if "frame_order" in active else ()):
    shuffled[m], perm, moved = model.shuffle_frames(m, batch[m], jax.random.fold_in(rng, i),
                                                    shared.config.frame_order_ratio)
    frames[m] = (perm, moved.astype(jnp.float32))
  for i, m in enumerate(heads["sentence_order"]["head"] if "sentence_order" in active else ()):
    ids = batch[m]
    gather, tgt, w = ordering.segment_permutation(
        jax.random.fold_in(rng, 50 + i), model.real_tokens(m, ids), model.cfg.order_segments)
    shuffled[m] = jnp.take_along_axis(ids, gather, axis=1)
    texts[m] = (tgt, w)
  return model(shuffled)["tokens"], frames, texts


@base.register
class FrameOrder(base.Objective):
  """HERO's frame order modelling: classify each shuffled tubelet group's original index
  (losses.order_loss)."""
  name = "frame_order"
  survey_name = "frame order modelling (HERO)"

  def check(self, model, objectives):
    videos = [m for m in model.modalities if m.kind == "video"]
    if not videos:
      raise ValueError(f"loss_weights.frame_order needs a video modality; the model has "
                       f"{ {m.name: m.kind for m in model.modalities} }; set "
                       "loss_weights.frame_order=0")
    for m in videos:
      t = tuple(m.option("tubelet"))[0]
      if not m.input_shape or m.input_shape[0] // t < 2:
        raise ValueError(f"loss_weights.frame_order needs model.modalities.{m.name}.input_shape "
                         f"(T, H, W, C) with at least 2 tubelet groups of {t} frames")
      if tokenizers.patch_dropout_of(m, model.block):
        raise ValueError(f"loss_weights.frame_order pools each tubelet group by position, and "
                         f"patch dropout on {m.name} leaves the groups unknown; set "
                         f"model.modalities.{m.name}.patch_dropout=0 or loss_weights.frame_order=0")

  def heads(self, model):
    return {"head": {m.name: base.dense(model, model.frame_groups(m.name),
                                        f"frame_order_head_{m.name}")
                     for m in model.cfg.modalities if m.kind == "video"}}

  def init(self, model, batch, encoded, out):
    for m in model.heads[self.name]["head"]:
      model.frame_order_logits(m, out["tokens"][m])

  def outputs(self, model, shared):
    tokens, frames, _ = shared.once("ordering", lambda: shuffled_pass(model, shared))
    return {m: (model.frame_order_logits(m, tokens[m]), *frames[m]) for m in frames}

  def losses(self, outputs, objectives, mesh=None):
    return base.per_modality(self.name, outputs, order_loss)


@base.register
class SentenceOrder(base.Objective):
  """Sentence ordering: the first text modality cut into model.order_segments segments and
  shuffled; each body token is classified into its original segment (losses.order_loss)."""
  name = "sentence_order"
  survey_name = "sentence ordering"

  def check(self, model, objectives):
    if not any(m.kind == "text" for m in model.modalities):
      raise ValueError(f"loss_weights.sentence_order needs a text modality; the model has "
                       f"{ {m.name: m.kind for m in model.modalities} }; set "
                       "loss_weights.sentence_order=0")

  def heads(self, model):
    text = [m for m in model.cfg.modalities if m.kind == "text"][:1]
    return {"head": {m.name: base.dense(model, model.cfg.order_segments,
                                        f"sentence_order_head_{m.name}") for m in text}}

  def init(self, model, batch, encoded, out):
    for m, head in model.heads[self.name]["head"].items():
      head(out["tokens"][m])

  def outputs(self, model, shared):
    tokens, _, texts = shared.once("ordering", lambda: shuffled_pass(model, shared))
    heads = model.heads[self.name]["head"]
    return {m: (heads[m](tokens[m][:, :shared.batch[m].shape[1]]).astype(jnp.float32),
                *texts[m]) for m in texts}

  def losses(self, outputs, objectives, mesh=None):
    return base.per_modality(self.name, outputs, order_loss)
