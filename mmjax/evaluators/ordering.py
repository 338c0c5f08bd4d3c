"""Frame ordering accuracy: shuffle tubelet groups of each test video (mmjax.ordering, a fixed
seed per batch) and count the shuffled groups whose predicted original index is right.

accuracy = #{shuffled g : argmax_j logits[g, j] = perm[g]} / #{shuffled g};  chance = 1/k for
k groups shuffled per video (a guess among the shuffled slots; the unshuffled order scores
the expected fixed-point rate, also 1/k).
"""
from __future__ import annotations

from typing import Any, Dict

import jax
import numpy as np

from mmjax import ordering
from mmjax.evaluators import base
from mmjax.evaluators.common import to_host


def evaluate(ev, batches, ratio: float, seed: int = 0) -> Dict[str, Any]:
  model = ev.model
  videos = [m for m in model.modalities if model.cfg.modality(m).kind == "video"]
  if not videos or "frame_order" not in model.cfg.objective_heads:
    return {"frame_order/skipped": "the model has no frame-order head (loss_weights.frame_order)"}
  m = videos[0]
  fn = ev.jitted(("frame_order", ratio, m), lambda p, b, r: model.apply(
      p, b, r, ratio, m, method=model.frame_order_predictions))
  hits = total = 0
  for i, b in enumerate(batches):
    logits, perm, moved = (to_host(x) for x in fn(ev.params, ev.put(b),
                                                  jax.random.key(seed * 100_003 + i)))
    right = (np.argmax(logits, axis=-1) == perm) & moved
    hits, total = hits + int(right.sum()), total + int(moved.sum())
  k = ordering.num_shuffled_groups(model.frame_groups(m), ratio)
  return {"frame_order/accuracy": hits / max(total, 1), "frame_order/chance": 1.0 / k,
          "frame_order/shuffled_groups": total}


@base.register
class FrameOrder(base.Evaluator):
  """Accuracy of the frame-order head at restoring shuffled tubelet groups."""
  name = "frame_order"

  def applies(self, ctx):
    model = ctx.model
    if (not any(model.cfg.modality(m).kind == "video" for m in model.modalities)
        or "frame_order" not in model.cfg.objective_heads):
      return "the model has no frame-order head (loss_weights.frame_order)"
    return None

  def run(self, ctx):
    return evaluate(ctx, ctx.test_batches(), ctx.config.objectives.frame_order_ratio,
                    ctx.config.seed)
