"""The linear probe's fit against a NumPy Newton solution of the same objective, and its l2
choice against a NumPy re-implementation (on a trained model: tests/test_eval_any_data.py)."""
import numpy as np
import pytest

from mmjax.evaluators import linear_probe as lp


def _blobs(n, c=4, d=8, noise=0.2, seed=0):
  """Unit-norm points around c fixed random unit directions: [n, d], labels [n]."""
  means = np.random.default_rng(0).normal(size=(c, d))
  means /= np.linalg.norm(means, axis=1, keepdims=True)
  rng = np.random.default_rng(seed + 1)
  y = np.arange(n) % c
  x = means[y] + noise * rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True), y


def _newton(x, y, c, l2, w=None, steps=30):
  """float64 Newton's method on L(W, b) = sum_i w_i CE / sum_i w_i + l2/2 |W|^2 (b free)."""
  n, d = x.shape
  w = np.ones(n) if w is None else w.astype(np.float64)
  w = w / w.sum()
  xt = np.concatenate([x, np.ones((n, 1))], axis=1)             # [n, d+1]
  reg = np.kron(np.eye(c), np.diag([l2] * d + [0.0]))           # no penalty on b
  theta = np.zeros((c, d + 1))                                  # row k: class k's [W_k, b_k]
  onehot = np.eye(c)[y]
  for _ in range(steps):
    z = xt @ theta.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = ((w[:, None] * (p - onehot)).T @ xt).ravel() + reg @ theta.ravel()
    a = np.einsum("ik,kl->ikl", p, np.eye(c)) - np.einsum("ik,il->ikl", p, p)  # softmax Jacobian
    hess = np.einsum("i,ikl,ia,ib->kalb", w, a, xt, xt).reshape(reg.shape) + reg
    theta = theta - np.linalg.lstsq(hess, grad, rcond=None)[0].reshape(c, d + 1)
  return {"w": theta[:, :d].T, "b": theta[:, d]}


def _loss(params, x, y, l2):
  z = x @ params["w"] + params["b"]
  z = z - z.max(1, keepdims=True)
  ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
  return ce.mean() + 0.5 * l2 * np.sum(params["w"] ** 2)


def test_fit_matches_newton():
  x, y = _blobs(60, c=3, d=5, noise=0.8)
  for l2 in (1e-2, 1e-1):
    got = lp.fit(x, y, 3, l2)
    want = _newton(x, y, 3, l2)
    np.testing.assert_allclose(got["w"], want["w"], atol=2e-3)
    # b is defined up to a shift shared by all classes: compare centred
    np.testing.assert_allclose(got["b"] - got["b"].mean(), want["b"] - want["b"].mean(),
                               atol=2e-3)
    assert abs(_loss(got, x, y, l2) - _loss(want, x, y, l2)) < 1e-6
    assert float(lp.objective(got, x.astype(np.float32), y, np.ones(60, np.float32), l2)) == \
        pytest.approx(_loss(want, x, y, l2), abs=1e-5)


def _argmax_strict(logits):
  """Argmax at 1e-4 resolution; a tie for the top is -1 (a miss)."""
  s = np.round(logits / 1e-4)
  top = s.max(1, keepdims=True)
  return np.where((s == top).sum(1) == 1, s.argmax(1), -1)


def test_separable_probe_is_exact_and_l2_is_chosen_on_the_holdout():
  x, y = _blobs(200)
  xt, yt = _blobs(100, seed=1)
  grid = (1e-4, 1e-2, 1e-1, 1.0, 1e4)
  out = lp.select_and_fit(x, y, grid, holdout=0.2, seed=3)
  # NumPy re-implementation: fit each l2 without the held-out 20%, score them, pick the best
  # accuracy (ties: the largest l2)
  held = lp.holdout_mask(len(x), 0.2, seed=3)
  assert held.sum() == 40
  acc = [np.mean(_argmax_strict(x[held] @ p["w"] + p["b"]) == y[held])
         for p in (_newton(x, y, 4, l2, w=(~held).astype(float)) for l2 in grid)]
  np.testing.assert_allclose(out["holdout_accuracy"], acc)
  # separable: the three weakest tie at 1.0 and the largest of them wins; stronger ones lose
  assert acc[:3] == [1.0] * 3 and max(acc[3:]) < 0.9, acc
  assert out["l2"] == max(zip(acc, grid))[1] == 1e-1
  assert lp.accuracy(out["params"], xt, yt) == 1.0  # refit on all 200, scored on 100 new
  np.testing.assert_allclose(out["params"]["w"], _newton(x, y, 4, 1e-1)["w"], atol=2e-3)
