"""Masked modelling on held-out data: MLM accuracy on masked text positions and the MIM
regression loss, with the training objectives' masking (fixed seed, so runs compare)."""
from __future__ import annotations

import jax
import numpy as np

from mmjax import train_lib


def evaluate(ev, batches, seed: int = 1234) -> dict:
  cfg = ev.config.copy_and_resolve_references()
  for name in cfg.loss_weights:
    cfg.loss_weights[name] = 0.0
  has_text = any(cfg.model.modalities[m].kind == "text" for m in ev.model.modalities)
  has_patches = any(cfg.model.modalities[m].kind in ("image", "video", "audio")
                    for m in ev.model.modalities)
  cfg.loss_weights.mlm = 1.0 if has_text else 0.0
  cfg.loss_weights.mim = 1.0 if has_patches else 0.0
  if not (has_text or has_patches):
    return {}
  fn = jax.jit(lambda p, b, r: train_lib.compute_losses(ev.model, p, b, r, cfg, ev.mesh)[1])
  sums, n = {}, 0
  for i, batch in enumerate(batches):
    m = jax.device_get(fn(ev.params, ev.put(batch), jax.random.fold_in(jax.random.key(seed), i)))
    for k, v in m.items():
      if k.startswith(("mlm", "mim")):
        sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  return {k: v / max(n, 1) for k, v in sums.items()}
