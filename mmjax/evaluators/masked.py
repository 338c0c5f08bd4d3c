"""Masked modelling on held-out data: MLM accuracy on masked text positions and the MIM
regression loss, with the training objectives' masking (fixed seed, so runs compare)."""
from __future__ import annotations

import dataclasses

import jax

from mmjax import objectives
from mmjax.config_lib import PATCH_KINDS


def evaluate(ev, batches, seed: int = 1234) -> dict:
  kinds = {ev.config.model.modality(m).kind for m in ev.model.modalities}
  weights = ((("mlm", 1.0),) if "text" in kinds else ()) + (
      (("mim", 1.0),) if kinds & set(PATCH_KINDS) else ())
  if not weights:
    return {}
  obj = dataclasses.replace(ev.config.objectives, weights=weights)
  fn = jax.jit(lambda p, b, r: objectives.pretraining_loss(ev.model, p, b, r, obj, ev.mesh)[1])
  sums, n = {}, 0
  for i, batch in enumerate(batches):
    m = jax.device_get(fn(ev.params, ev.put(batch), jax.random.fold_in(jax.random.key(seed), i)))
    for k, v in m.items():
      if k.startswith(("mlm", "mim")):
        sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  return {k: v / max(n, 1) for k, v in sums.items()}
