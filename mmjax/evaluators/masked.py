"""Masked modelling on held-out data: MLM accuracy on masked text positions and the MIM
regression loss, with the training objectives' masking (fixed seed, so runs compare)."""
from __future__ import annotations

import dataclasses

import jax

from mmjax import objectives
from mmjax.tokenizers import PATCH_KINDS
from mmjax.evaluators import base


def evaluate(ev, batches, seed: int = 1234) -> dict:
  mods = [ev.config.model.modality(m) for m in ev.model.modalities]
  kinds = {m.kind for m in mods}
  # [MASK] is the tokenizer's id (configure.text_ids); a vocab trained without MLM may lack it.
  no_mask = [m.name for m in mods if m.kind == "text"
             and not 0 <= m.option("mask_id") < m.option("vocab_size")]
  skipped = ({"mlm/skipped": f"the text vocab of {no_mask[0]} has no [MASK] id (trained "
                             "without MLM); train with loss_weights.mlm > 0"} if no_mask else {})
  weights = ((("mlm", 1.0),) if "text" in kinds and not no_mask else ()) + (
      (("mim", 1.0),) if kinds & set(PATCH_KINDS) else ())
  if not weights:
    return skipped
  obj = dataclasses.replace(ev.config.objectives, weights=weights)
  fn = ev.jitted(("masked", weights), lambda p, b, r: objectives.pretraining_loss(
      ev.model, p, b, r, obj, ev.mesh, train=False)[1])
  sums, n = {}, 0
  for i, batch in enumerate(batches):
    m = jax.device_get(fn(ev.params, ev.put(batch), jax.random.fold_in(jax.random.key(seed), i)))
    for k, v in m.items():
      if k.startswith(("mlm", "mim")):
        sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  return {**skipped, **{k: v / max(n, 1) for k, v in sums.items()}}


def _no_mask_id(ctx):
  """The text modalities whose vocab lacks a [MASK] id (configure.text_ids)."""
  mods = [ctx.config.model.modality(m) for m in ctx.model.modalities]
  return [m.name for m in mods if m.kind == "text"
          and not 0 <= m.option("mask_id") < m.option("vocab_size")]


class _Masked(base.Evaluator):
  """mlm and mim share one pass over the test split per evaluation point."""

  def run(self, ctx):
    res = ctx.per_point("masked", lambda: evaluate(ctx, ctx.test_batches()))
    return {k: v for k, v in res.items() if k.startswith(self.name) and k != "mlm/skipped"}


@base.register
class Mlm(_Masked):
  """Masked-token accuracy and loss on the test captions (the training masking, fixed seed)."""
  name = "mlm"

  def applies(self, ctx):
    if not any(ctx.config.model.modality(m).kind == "text" for m in ctx.model.modalities):
      return "the model has no text modality"
    no_mask = _no_mask_id(ctx)
    if no_mask:
      return (f"the text vocab of {no_mask[0]} has no [MASK] id (trained without MLM); train "
              "with loss_weights.mlm > 0")
    return None


@base.register
class Mim(_Masked):
  """Masked-patch regression loss on the test split's images / video / audio."""
  name = "mim"

  def applies(self, ctx):
    kinds = {ctx.config.model.modality(m).kind for m in ctx.model.modalities}
    return None if kinds & set(PATCH_KINDS) else "the model has no patch modality"
