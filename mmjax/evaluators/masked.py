"""Masked modelling on held-out data: MLM accuracy on masked text positions and the MIM
regression loss, with the training objectives' masking (fixed seed, so runs compare)."""
from __future__ import annotations

import dataclasses

import jax

from mmjax import objectives
from mmjax.config_lib import PATCH_KINDS


def evaluate(ev, batches, seed: int = 1234) -> dict:
  mods = [ev.config.model.modality(m) for m in ev.model.modalities]
  kinds = {m.kind for m in mods}
  # [MASK] is the tokenizer's id (config_lib.text_ids); a vocab trained without MLM may lack it.
  no_mask = [m.name for m in mods if m.kind == "text"
             and not 0 <= m.option("mask_id") < m.option("vocab_size")]
  skipped = ({"mlm/skipped": f"the text vocab of {no_mask[0]} has no [MASK] id (trained "
                             "without MLM); train with loss_weights.mlm > 0"} if no_mask else {})
  weights = ((("mlm", 1.0),) if "text" in kinds and not no_mask else ()) + (
      (("mim", 1.0),) if kinds & set(PATCH_KINDS) else ())
  if not weights:
    return skipped
  obj = dataclasses.replace(ev.config.objectives, weights=weights)
  fn = jax.jit(lambda p, b, r: objectives.pretraining_loss(ev.model, p, b, r, obj, ev.mesh)[1])
  sums, n = {}, 0
  for i, batch in enumerate(batches):
    m = jax.device_get(fn(ev.params, ev.put(batch), jax.random.fold_in(jax.random.key(seed), i)))
    for k, v in m.items():
      if k.startswith(("mlm", "mim")):
        sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  return {**skipped, **{k: v / max(n, 1) for k, v in sums.items()}}
