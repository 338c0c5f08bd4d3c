"""Dense probe: a linear classifier on frozen patch tokens predicting the object under each
patch (what SILC and TIPS promise the image tower's local features carry).

Features: the image tower's output token of each patch ([CLS] dropped), L2-normalized,
x [P, D]. Labels: per patch, the most frequent class among its pixels' 'pixel_labels'
(data.regions on the built-in scenes: 0 background, 1 + colour x shape; ties go to the lower
class). The probe is mmjax.evaluators.linear_probe's logistic regression (strength chosen from
eval.probe_l2 on a held-out eval.probe_holdout of the train patches, then refit), fitted on
the patches of eval.probe_train_examples train images (at most MAX_TRAIN_PATCHES, a seeded
sample) and scored on every patch of the test split:

  accuracy                  top-1 over all test patches (ties are misses)
  object_accuracy           top-1 over the patches whose label is an object (not background)
  majority_accuracy         the train split's most frequent class, predicted everywhere
  majority_object_accuracy  its most frequent object class, on the object patches
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from mmjax.evaluators import base, linear_probe
from mmjax.evaluators.common import inputs, strictly_best

MAX_TRAIN_PATCHES = 100_000


def patch_labels(pixel_labels: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
  """[B, H, W] pixel classes -> [B, gh * gw] per-patch majority (row-major patches)."""
  b, h, w = pixel_labels.shape
  gh, gw = grid
  if h % gh or w % gw:
    raise ValueError(f"pixel_labels {h}x{w} do not divide into the {gh}x{gw} patch grid")
  x = pixel_labels.reshape(b, gh, h // gh, gw, w // gw).transpose(0, 1, 3, 2, 4)
  x = x.reshape(b * gh * gw, -1)
  counts = np.zeros((len(x), int(pixel_labels.max()) + 1), np.int64)
  np.add.at(counts, (np.repeat(np.arange(len(x)), x.shape[1]), x.ravel()), 1)
  return counts.argmax(axis=1).reshape(b, gh * gw)


def patch_grid(ctx, modality: str) -> Tuple[int, int]:
  """The modality's patch grid (gh, gw) at its configured input."""
  m = ctx.config.model.modality(modality)
  grid = m.option("grid")
  if grid:
    return int(grid[0]), int(grid[1])
  patch = m.option("patch")
  return m.input_shape[0] // patch, m.input_shape[1] // patch


def features(ctx, modality: str, batches) -> Tuple[np.ndarray, np.ndarray]:
  """(x [P, D] L2-normalized patch tokens, y [P] patch labels) of the batches' images."""
  grid = patch_grid(ctx, modality)
  skip = int(bool(ctx.config.model.modality(modality).option("add_cls")))
  xs, ys = [], []
  for batch in batches:
    tokens = np.asarray(ctx.encode(inputs(batch, modality))[modality][0], np.float32)[:, skip:]
    if tokens.shape[1] != grid[0] * grid[1]:
      raise ValueError(f"{modality} has {tokens.shape[1]} patch tokens, not the "
                       f"{grid[0]}x{grid[1]} grid")
    xs.append(tokens.reshape(-1, tokens.shape[-1]))
    ys.append(patch_labels(np.asarray(batch["pixel_labels"]), grid).ravel())
  x = np.concatenate(xs)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), np.concatenate(ys)


def majority(y: np.ndarray, objects_only: bool = False) -> int:
  """The most frequent label of y (among labels > 0 with objects_only)."""
  y = y[y > 0] if objects_only else y
  return int(np.bincount(y).argmax()) if len(y) else 0


def evaluate(x_tr, y_tr, x_te, y_te, l2_grid, holdout: float, seed: int) -> Dict[str, Any]:
  """The dense_probe/* metrics (module docstring) of a probe fitted on (x_tr, y_tr)."""
  if len(x_tr) > MAX_TRAIN_PATCHES:
    keep = np.random.default_rng(seed).permutation(len(x_tr))[:MAX_TRAIN_PATCHES]
    x_tr, y_tr = x_tr[keep], y_tr[keep]
  c = int(max(y_tr.max(), y_te.max())) + 1
  fit = linear_probe.select_and_fit(x_tr, y_tr, l2_grid, holdout, seed, num_classes=c)
  hit = strictly_best(linear_probe.predict(fit["params"], x_te), y_te)
  obj = y_te > 0
  return {"dense_probe/accuracy": float(hit.mean()),
          "dense_probe/object_accuracy": float(hit[obj].mean()) if obj.any() else 0.0,
          "dense_probe/majority_accuracy": float(np.mean(y_te == majority(y_tr))),
          "dense_probe/majority_object_accuracy": float(np.mean(
              y_te[obj] == majority(y_tr, objects_only=True))) if obj.any() else 0.0,
          "dense_probe/l2": fit["l2"], "dense_probe/num_classes": c,
          "dense_probe/train_patches": int(len(y_tr)), "dense_probe/test_patches": int(len(y_te)),
          "dense_probe/object_patches": int(obj.sum())}


def _image(ctx) -> Optional[str]:
  return next((m for m in ctx.model.modalities
               if ctx.config.model.modality(m).kind == "image"), None)


@base.register
class DenseProbe(base.Evaluator):
  """A per-patch logistic-regression probe of the object class on frozen patch tokens."""
  name = "dense_probe"

  def _train(self, ctx):
    return ctx.batches("train", ctx.config.eval.probe_train_examples)

  def applies(self, ctx):
    if _image(ctx) is None:
      return "needs an image modality"
    if ctx.config.data.get("max_patches", 0):
      return "native-aspect images (data.max_patches) have no fixed patch grid"
    if "pixel_labels" not in ctx.test_batches()[0]:
      return "the test split has no pixel_labels (data.regions=True on the built-in scenes)"
    return None

  def run(self, ctx):
    e, m = ctx.config.eval, _image(ctx)
    x_tr, y_tr = features(ctx, m, self._train(ctx))
    x_te, y_te = features(ctx, m, ctx.test_batches())
    return evaluate(x_tr, y_tr, x_te, y_te, e.probe_l2, e.probe_holdout, ctx.config.seed)
