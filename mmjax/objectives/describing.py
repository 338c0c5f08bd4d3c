"""Describing one modality in text (survey: captioning / language modelling): a captioning
decoder reading the caption source's tower (CoCa, CapPa), and prefix-LM over the joint stream
(SimVLM)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax import decoder as decoder_lib
from mmjax.objectives import base
from mmjax.objectives.losses import caption_loss


def check_text_and_source(which: str, model) -> None:
  """caption / prefix_lm need a text modality, another one to describe, and no [CLS]."""
  kinds = {m.name: m.kind for m in model.modalities}
  if "text" not in kinds.values() or all(k == "text" for k in kinds.values()):
    raise ValueError(f"loss_weights.{which} needs a text modality and another one to "
                     f"describe; the model has {kinds}; set loss_weights.{which}=0")
  if kinds.get(model.caption_source) == "text":
    raise ValueError(f"model.caption_from={model.caption_source!r} is text; name the "
                     "modality to caption (image, video, audio)")
  if model.modality(model.caption_text).option("add_cls"):
    raise ValueError(f"loss_weights.{which} needs model.modalities.{model.caption_text}."
                     "add_cls=False (the tokenizer's [CLS] starts the caption)")


def caption_rows(model, batch, rng, cappa_fraction: float):
  """(inputs, targets, weights) [B, L-1]: the caption teacher-forced (decoder.teacher_forcing).
  A fraction of rows (CapPa) sees only [MASK] inputs: with inputs that carry no content,
  causal and full attention see the same information (memory and positions), so the same
  decoder does parallel prediction in its one forward pass."""
  t = model.cfg.caption_text
  emb, ids = model.embedders[t], batch[t]
  mask = model.real_tokens(t, ids)
  valid = batch.get(f"{t}_valid")
  if valid is not None:
    mask = mask & valid[:, None]
  inputs, targets, weights = decoder_lib.teacher_forcing(ids, mask)
  if cappa_fraction > 0:
    parallel = jax.random.bernoulli(rng, cappa_fraction, (ids.shape[0],))
    fill = emb.mask_id if emb.mask_id >= 0 else emb.pad_id
    inputs = jnp.where(parallel[:, None], jnp.asarray(fill, inputs.dtype), inputs)
  return inputs, targets, weights


def teacher_forced_caption(model, batch, encoded, rng, cappa_fraction: float):
  """(logits [B, L-1, V], targets, weights): caption_rows through the captioning decoder on
  the caption source's tokens."""
  inputs, targets, weights = caption_rows(model, batch, rng, cappa_fraction)
  logits, _ = model.caption_logits(inputs, *encoded[model.cfg.caption_source])
  return logits, targets, weights


def prefix_lm_targets(model, batch, rng, random_prefix: bool):
  """(logits [B, L-1, V], targets, weights): the joint stream over [other modalities; text]
  under the mask of decoder.prefix_positions; the text prefix is [CLS] plus, with
  random_prefix, a uniform 1..n-2 more of the n real tokens; weights only on suffix targets."""
  t = model.cfg.caption_text
  ids = batch[t]
  length = ids.shape[1]
  mask = model.real_tokens(t, ids)
  n = jnp.sum(mask, axis=1).astype(jnp.int32)
  if random_prefix:  # prefix in [1, n - 1]: at least one target left in the suffix
    prefix = 1 + jnp.floor(jax.random.uniform(rng, n.shape) * jnp.maximum(n - 1, 1)).astype(
        jnp.int32)
  else:
    prefix = jnp.ones_like(n)
  logits = model.lm_logits(t, model.prefix_stream(batch, prefix)[:, :length - 1])
  after = jnp.arange(1, length, dtype=jnp.int32)[None, :] >= prefix[:, None]
  weights = (mask[:, 1:] & after).astype(jnp.float32)
  valid = batch.get(f"{t}_valid")
  if valid is not None:
    weights = weights * valid[:, None].astype(jnp.float32)
  return logits, ids[:, 1:], weights


@base.register
class Captioning(base.Objective):
  """Next-token cross entropy of a decoder on the caption source's tower output
  (losses.caption_loss); objectives.cappa_fraction of the rows predict in parallel (CapPa)."""
  name = "caption"
  survey_name = "captioning (CoCa, CapPa)"

  def check(self, model, objectives):
    check_text_and_source(self.name, model)

  def heads(self, model):
    cfg = model.cfg
    t = cfg.modality(cfg.caption_text)
    return {"decoder": decoder_lib.CaptionDecoder(t.tower or cfg.block, cfg.decoder_depth,
                                                  t.option("vocab_size"),
                                                  name="caption_decoder")}

  def init(self, model, batch, encoded, out):
    model.caption_logits(batch[model.cfg.caption_text][:, :-1],
                         *encoded[model.cfg.caption_source])

  def outputs(self, model, shared):
    return teacher_forced_caption(model, shared.batch, shared.clean(),
                                  jax.random.fold_in(shared.rng, 11),
                                  shared.config.cappa_fraction)

  def losses(self, outputs, objectives, mesh=None):
    return {self.name: caption_loss(*outputs)}


@base.register
class PrefixLM(base.Objective):
  """Prefix language modelling on the joint stream (losses.caption_loss on suffix targets)."""
  name = "prefix_lm"
  survey_name = "prefix language modelling (SimVLM)"
  requires = {"prefix_lm": "it needs one joint stream over [other modality; text] "
                           "(early_concat or hier_multi_to_one); set loss_weights.prefix_lm=0 "
                           "or use loss_weights.caption (a decoder that works with any fusion)"}

  def check(self, model, objectives):
    check_text_and_source(self.name, model)

  def heads(self, model):
    text = [m for m in model.cfg.modalities if m.kind == "text"][:1]
    return {"head": {m.name: base.dense(model, m.option("vocab_size"), f"lm_head_{m.name}",
                                        ("embed", "vocab")) for m in text},
            "norm": {m.name: base.layer_norm(model, f"lm_ln_{m.name}") for m in text}}

  def init(self, model, batch, encoded, out):
    for m in model.heads[self.name]["head"]:
      model.lm_logits(m, out["tokens"][m])

  def outputs(self, model, shared):
    return prefix_lm_targets(model, shared.batch, jax.random.fold_in(shared.rng, 12),
                             shared.config.prefix_random)

  def losses(self, outputs, objectives, mesh=None):
    return {self.name: caption_loss(*outputs)}
