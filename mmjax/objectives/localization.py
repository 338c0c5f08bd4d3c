"""Localization-aware captioning (LocCa; SigLIP 2's decoder): one text decoder cross-attending
to the un-pooled image tokens, trained on three tasks at once, each a next-token loss:

  caption    [CLS] caption [SEP]                    -> the caption (objectives.cappa_fraction
                                                       of the rows predict it in parallel, CapPa)
  referring  [CLS] region caption [SEP] l1 l2 l3 l4 -> the box's location tokens l1..l4
  grounded   [CLS] l1 l2 l3 l4 region caption [SEP] -> the region's caption

A box (y0, x0, y1, x1) in [0, 1] becomes model.loc_bins location tokens per coordinate,
ids V + floor(c * bins) (V the text vocabulary): the decoder's head predicts V + bins classes,
and a location token is embedded as the text table's [PAD] at its position plus a learned
vector of its bin. Each example contributes one of its regions (drawn per step) to the two
region tasks; the loss is

  L = (w_c L_caption + w_r L_referring + w_g L_grounded) / (w_c + w_r + w_g)

with objectives.locca_{caption,referring,grounded} the w's. The data carries the regions as
'region_boxes' [B, R, 4], 'region_text' [B, R, L] and 'region_valid' [B, R] (data.regions).
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import decoder as decoder_lib
from mmjax.objectives import base
from mmjax.objectives.describing import caption_rows, check_text_and_source
from mmjax.objectives.losses import caption_loss

REGION_KEYS = ("region_boxes", "region_text", "region_valid")
TASKS = ("caption", "referring", "grounded")


def box_tokens(boxes, bins: int, vocab: int):
  """Boxes [..., 4] in [0, 1] -> location token ids [..., 4]: vocab + clip(floor(c * bins))."""
  q = jnp.clip(jnp.floor(boxes * bins), 0, bins - 1).astype(jnp.int32)
  return vocab + q


def token_boxes(ids, bins: int, vocab: int):
  """Location token ids [..., 4] -> boxes [..., 4]: each bin's centre, (id - vocab + 0.5) / bins."""
  return (jnp.clip(ids - vocab, 0, bins - 1).astype(jnp.float32) + 0.5) / bins


def box_iou(a, b):
  """IoU of boxes a, b [..., 4] (y0, x0, y1, x1) -> [...]."""
  inter = [jnp.maximum(jnp.minimum(a[..., i + 2], b[..., i + 2]) - jnp.maximum(a[..., i], b[..., i]),
                       0.0) for i in (0, 1)]
  area = lambda x: jnp.maximum(x[..., 2] - x[..., 0], 0) * jnp.maximum(x[..., 3] - x[..., 1], 0)
  i = inter[0] * inter[1]
  return i / jnp.maximum(area(a) + area(b) - i, 1e-9)


def referring_sequence(text, loc):
  """Region caption ids [B, L] ([CLS] c [SEP] PAD..., n real tokens) and location ids [B, 4] ->
  ([CLS] c [SEP] l1..l4 PAD..., its weights on the l's as targets [B, L-1]). Location tokens
  past L are cut (data.text_len must hold the longest region caption + 4)."""
  n = jnp.sum(text != 0, axis=1, keepdims=True)
  j = jnp.arange(text.shape[1])[None, :]
  k = jnp.clip(j - n, 0, 3)
  is_loc = (j >= n) & (j < n + 4)
  seq = jnp.where(is_loc, jnp.take_along_axis(loc, k, axis=1), text)
  return seq, is_loc[:, 1:].astype(jnp.float32)


def grounded_sequence(text, loc):
  """([CLS] l1..l4 c [SEP] PAD... [B, L], weights [B, L-1] on the caption and [SEP] as
  targets): the region caption after its box; the tail past L is cut."""
  length = text.shape[1]
  body = jnp.concatenate([text[:, :1], loc, text[:, 1:]], axis=1)[:, :length]
  j = jnp.arange(1, length)[None, :]
  return body, ((j >= 5) & (body[:, 1:] != 0)).astype(jnp.float32)


def pick_region(rng, boxes, text, valid):
  """One valid region per example (uniform): (box [B, 4], text [B, L], has_region [B])."""
  logits = jnp.where(valid, 0.0, -1e9)
  i = jax.random.categorical(rng, logits, axis=-1)
  take = lambda x: jnp.take_along_axis(x, i.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
  return take(boxes), take(text), jnp.any(valid, axis=1)


def decoder_logits(model, ids, memory, memory_mask):
  """The LocCa decoder on ids [B, n] (text ids < V, location ids >= V), positions 0..n-1,
  reading memory [B, Nm, D] -> logits [B, n, V + bins] float32."""
  heads, emb = model.heads["locca"], model.embedders[model.cfg.caption_text]
  is_loc = ids >= emb.vocab_size
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
  tokens, _ = emb(jnp.where(is_loc, emb.pad_id, ids), positions=positions)
  loc = jnp.take(heads["loc_embed"], jnp.clip(ids - emb.vocab_size, 0), axis=0)
  tokens = tokens + jnp.where(is_loc[..., None], loc, 0).astype(tokens.dtype)
  return heads["decoder"](tokens, memory, memory_mask)[0]


def task_rows(model, batch, rng, cfg) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(inputs, targets, weights), each [B, 3, L-1]: every example's caption, referring and
  grounded rows, in that order (the example axis first, so gradient accumulation joins them
  per example)."""
  ids = batch[model.cfg.caption_text]
  vocab = model.embedders[model.cfg.caption_text].vocab_size
  r_cappa, r_region = jax.random.split(rng)
  cap_in, cap_t, cap_w = caption_rows(model, batch, r_cappa, cfg.cappa_fraction)
  box, text, has = pick_region(r_region, batch["region_boxes"], batch["region_text"],
                               batch["region_valid"])
  loc = box_tokens(box, model.cfg.loc_bins, vocab)
  ref, ref_w = referring_sequence(text.astype(ids.dtype), loc)
  gnd, gnd_w = grounded_sequence(text.astype(ids.dtype), loc)
  has = has[:, None].astype(jnp.float32)
  stack = lambda *rows: jnp.stack(rows, axis=1)
  return (stack(cap_in, ref[:, :-1], gnd[:, :-1]), stack(cap_t, ref[:, 1:], gnd[:, 1:]),
          stack(cap_w, ref_w * has, gnd_w * has))


@base.register
class LocCa(base.Objective):
  """Captioning, referring-expression and grounded captioning through one decoder (module
  docstring); losses.caption_loss per task, mixed by objectives.locca_* weights."""
  name = "locca"
  survey_name = "localization-aware captioning (LocCa, SigLIP 2)"
  batch_keys = REGION_KEYS

  def check(self, model, objectives):
    check_text_and_source(self.name, model)
    if model.loc_bins < 2:
      raise ValueError(f"model.loc_bins={model.loc_bins} must be >= 2")
    w = task_weights(objectives)
    if min(w) < 0 or sum(w) <= 0:
      raise ValueError(f"objectives.locca_{{caption,referring,grounded}}={w} must be >= 0 with "
                       "a positive sum")

  def heads(self, model):
    cfg = model.cfg
    t = cfg.modality(cfg.caption_text)
    blk = t.tower or cfg.block
    bins = cfg.loc_bins
    return {"decoder": decoder_lib.CaptionDecoder(blk, cfg.decoder_depth,
                                                  t.option("vocab_size") + bins,
                                                  name="locca_decoder"),
            "loc_embed": model.param("locca_loc_embed", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (None, "embed")), (bins, blk.width),
                blk.param_dtype)}

  def init(self, model, batch, encoded, out):
    decoder_logits(model, batch[model.cfg.caption_text][:, :-1],
                   *encoded[model.cfg.caption_source])

  def outputs(self, model, shared):
    inputs, targets, weights = task_rows(model, shared.batch, jax.random.fold_in(shared.rng, 13),
                                         shared.config)
    memory, mask = shared.clean()[model.cfg.caption_source]
    b, tasks, n = inputs.shape
    logits = decoder_logits(model, inputs.reshape(b * tasks, n), jnp.repeat(memory, tasks, 0),
                            jnp.repeat(mask, tasks, 0))  # rows example-major, as inputs
    return logits.reshape(b, tasks, n, -1), targets, weights

  def losses(self, outputs, objectives, mesh=None):
    logits, targets, weights = outputs
    parts = [caption_loss(logits[:, i], targets[:, i], weights[:, i]) for i in range(3)]
    w = task_weights(objectives)
    loss = sum(wi * p[0] for wi, p in zip(w, parts)) / sum(w)
    metrics = {"loss": loss}
    for task, (l, m) in zip(TASKS, parts):
      metrics[f"{task}_loss"], metrics[f"{task}_accuracy"] = l, m["accuracy"]
    return {self.name: (loss, metrics)}


def task_weights(objectives) -> Tuple[float, float, float]:
  return (objectives.locca_caption, objectives.locca_referring, objectives.locca_grounded)
