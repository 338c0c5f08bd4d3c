"""Linear probe: multinomial logistic regression on frozen, L2-normalized embeddings.

Features x [N, D]: the contrastive embedding of the first non-text modality, L2-normalized,
of up to eval.probe_train_examples train examples; labels y in 0..C-1 (C = largest label + 1).
For one strength l2 the probe (W [D, C], b [C], from zeros) minimizes

  L(W, b) = sum_i w_i CE(x_i W + b, y_i) / sum_i w_i + l2 / 2 * ||W||_F^2

by full-batch L-BFGS (optax, jitted; one compile serves every fit). The strength is chosen
from eval.probe_l2 by accuracy on a held-out slice (a seeded eval.probe_holdout fraction of the
train examples, w_i = 0 there; ties go to the largest l2), then the probe is refit on all
train examples and scored on the test split: top-1 accuracy, ties are misses.
"""
from __future__ import annotations

import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.evaluators import base
from mmjax.evaluators.common import inputs, strictly_best

MAX_STEPS = 500
TOL = 1e-5  # gradient norm at which L-BFGS stops


def objective(params, x, y, w, l2):
  """L(W, b) above: weighted mean cross-entropy + l2 / 2 * ||W||^2 (scalar)."""
  logits = x @ params["w"] + params["b"]
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
  return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-9) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _fit(x, y, w, l2, num_classes: int, max_steps: int):
  fun = lambda p: objective(p, x, y, w, l2)
  params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
            "b": jnp.zeros((num_classes,), x.dtype)}
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def going(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    grad = optax.tree_utils.tree_get(state, "grad")
    return (count == 0) | ((count < max_steps) & (optax.tree_utils.tree_norm(grad) >= TOL))

  params, state = jax.lax.while_loop(going, step, (params, opt.init(params)))
  return params, optax.tree_utils.tree_get(state, "count")


def fit(x, y, num_classes: int, l2: float, weights=None, max_steps: int = MAX_STEPS):
  """The probe {'w': [D, C], 'b': [C]} minimizing L for one l2 (weights: [N], default 1)."""
  x = jnp.asarray(x, jnp.float32)
  w = jnp.ones(len(x), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  params, _ = _fit(x, jnp.asarray(y, jnp.int32), w, jnp.float32(l2), num_classes=num_classes,
                   max_steps=max_steps)
  return jax.device_get(params)


def predict(params, x) -> np.ndarray:
  """[N, C] logits."""
  return np.asarray(x, np.float32) @ params["w"] + params["b"]


def accuracy(params, x, y) -> float:
  """Top-1 accuracy; the true class must score strictly highest (at 1e-4 resolution)."""
  return float(np.mean(strictly_best(predict(params, x), np.asarray(y)))) if len(y) else 0.0


def holdout_mask(n: int, fraction: float, seed: int = 0) -> np.ndarray:
  """[n] bool, True on a seeded random round(fraction * n) examples (at least 1, at most n-1)."""
  k = int(min(max(round(fraction * n), 1), n - 1))
  mask = np.zeros(n, bool)
  mask[np.random.default_rng(seed).permutation(n)[:k]] = True
  return mask


def select_and_fit(x, y, l2_grid: Sequence[float], holdout: float = 0.2, seed: int = 0,
                   num_classes=None) -> Dict:
  """Fits every l2 on the non-held-out examples, picks the best held-out accuracy (ties: the
  largest l2), refits on all. Returns {'params', 'l2', 'holdout_accuracy' (per l2), ...}."""
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  if len(x) < 2:
    raise ValueError(f"the linear probe needs at least 2 labelled train examples, got {len(x)}; "
                     "raise eval.probe_train_examples or add train data")
  c = int(num_classes or int(y.max()) + 1)
  held = holdout_mask(len(x), holdout, seed)
  grid = [float(v) for v in l2_grid]
  val = [accuracy(fit(x, y, c, l2, weights=~held), x[held], y[held]) for l2 in grid]
  best = max(range(len(grid)), key=lambda i: (val[i], grid[i]))
  return {"params": fit(x, y, c, grid[best]), "l2": grid[best], "holdout_accuracy": val,
          "num_classes": c, "holdout_examples": int(held.sum())}


def _embed(ev, modality: str, batches) -> np.ndarray:
  return np.concatenate([ev.embeddings(ev.encode(inputs(b, modality)))[modality]
                         for b in batches])


def evaluate(ev, modality: str, train_batches, test_batches, l2_grid: Sequence[float],
             holdout: float = 0.2, seed: int = 0) -> Dict:
  """Probe accuracy on the test batches of a probe fitted on the train batches' embeddings."""
  x_tr, y_tr = _embed(ev, modality, train_batches), np.concatenate(
      [b["label"] for b in train_batches])
  x_te, y_te = _embed(ev, modality, test_batches), np.concatenate(
      [b["label"] for b in test_batches])
  for split, y in (("train", y_tr), ("test", y_te)):
    if y.size and y.min() < 0:
      raise ValueError(f"{split} label {int(y.min())} is negative; labels must be 0..C-1")
  c = int(max(y_tr.max(), y_te.max())) + 1
  out = select_and_fit(x_tr, y_tr, l2_grid, holdout, seed, num_classes=c)
  return {"linear_probe/accuracy": accuracy(out["params"], x_te, y_te),
          "linear_probe/chance": 1.0 / c, "linear_probe/l2": out["l2"],
          "linear_probe/holdout_accuracy": max(out["holdout_accuracy"]),
          "linear_probe/num_classes": c, "linear_probe/train_examples": len(y_tr),
          "linear_probe/test_examples": len(y_te),
          "linear_probe/method": f"logistic regression on {modality} embeddings"}


def _probe_modality(ctx):
  """The first non-text modality (its embeddings are probed), or None."""
  return next((m for m in ctx.model.modalities
               if ctx.config.model.modality(m).kind != "text"), None)


@base.register
class LinearProbe(base.Evaluator):
  """A logistic-regression probe on frozen embeddings: fit on train, scored on test."""
  name = "linear_probe"

  def _train(self, ctx):
    return ctx.batches("train", ctx.config.eval.probe_train_examples)

  def applies(self, ctx):
    if _probe_modality(ctx) is None:
      return "needs a non-text modality to embed"
    if not ctx.labelled:
      return "the test split has no labels"
    if "label" not in self._train(ctx)[0]:
      return "the train split has no labels"
    return None

  def run(self, ctx):
    e = ctx.config.eval
    return evaluate(ctx, _probe_modality(ctx), self._train(ctx), ctx.test_batches(),
                    l2_grid=e.probe_l2, holdout=e.probe_holdout, seed=ctx.config.seed)
