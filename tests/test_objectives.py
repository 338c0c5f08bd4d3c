"""Objectives against plain NumPy references (single device), plus combine/check rules."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import fusion as fusion_lib
from mmjax import masking
from mmjax import objectives as O

from tests.helpers import grad

# ------------------------------------------------------------------------------ references


def _np_norm(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_logsumexp(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_contrastive(za, zb, param, max_scale=100.0):
  a, b = _np_norm(za), _np_norm(zb)
  s = min(np.exp(param), max_scale)
  logits = s * a @ b.T
  n = len(a)
  l_ab = np.mean(_np_logsumexp(logits, 1) - logits[np.arange(n), np.arange(n)])
  l_ba = np.mean(_np_logsumexp(logits.T, 1) - logits.T[np.arange(n), np.arange(n)])
  acc_ab = np.mean(logits.argmax(1) == np.arange(n))
  acc_ba = np.mean(logits.argmax(0) == np.arange(n))
  return 0.5 * (l_ab + l_ba), acc_ab, acc_ba, s


def np_sigmoid(za, zb, t_param, b):
  a, bb = _np_norm(za), _np_norm(zb)
  logits = np.exp(t_param) * a @ bb.T + b
  n = len(a)
  z = 2 * np.eye(n) - 1
  return -np.sum(_np_log_sigmoid(z * logits)) / n


def np_mlm(logits, targets, weights):
  logits = np.asarray(logits, np.float64)
  ce = _np_logsumexp(logits, -1) - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  acc = logits.argmax(-1) == targets
  return (ce * weights).sum() / weights.sum(), (acc * weights).sum() / weights.sum()


def np_mim(pred, target, weights, norm_pix):
  target = np.asarray(target, np.float64)
  if norm_pix:
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True)
                                                                 + 1e-6)
  per = ((pred - target) ** 2).mean(-1)
  return (per * weights).sum() / weights.sum()


def _pairs(seed, n=12, d=8, noise=1.0):
  rng = np.random.RandomState(seed)
  za = rng.randn(n, d).astype(np.float32)
  zb = (za + noise * rng.randn(n, d)).astype(np.float32)  # correlated: accuracy is non-trivial
  return za, zb


# ------------------------------------------------------------------------------ contrastive


@pytest.mark.parametrize("param", [np.log(1 / 0.07), np.log(2.0), np.log(200.0)])
def test_contrastive_matches_numpy_incl_clamp(param):
  za, zb = _pairs(0)
  loss, m = jax.jit(O.contrastive_loss)(za, zb, jnp.float32(param))
  ref, acc_ab, acc_ba, s = np_contrastive(za, zb, param)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], ref, rtol=1e-5)
  np.testing.assert_allclose(m["i2t_accuracy"], acc_ab)
  np.testing.assert_allclose(m["t2i_accuracy"], acc_ba)
  np.testing.assert_allclose(m["logit_scale"], s, rtol=1e-6)
  assert 0 < acc_ab < 1  # the inputs exercise the accuracy
  if param > np.log(100.0):
    assert float(m["logit_scale"]) == pytest.approx(100.0)
    g = grad(lambda p: O.contrastive_loss(za, zb, p)[0])(jnp.float32(param))
    assert float(g) == 0.0  # clamped: no gradient above the cap


def test_contrastive_ignores_embedding_norm():
  za, zb = _pairs(1)
  a = O.contrastive_loss(za, zb, 2.0)[0]
  b = O.contrastive_loss(3.0 * za, 0.5 * zb, 2.0)[0]
  np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------------------------ sigmoid


@pytest.mark.parametrize("t_param,b", [(np.log(10.0), -10.0), (1.3, 0.5)])
def test_sigmoid_matches_numpy(t_param, b):
  za, zb = _pairs(2, n=10)
  loss, m = jax.jit(O.sigmoid_loss)(za, zb, jnp.float32(t_param), jnp.float32(b))
  np.testing.assert_allclose(loss, np_sigmoid(za, zb, t_param, b), rtol=1e-5)
  logits = _np_norm(za) @ _np_norm(zb).T
  np.testing.assert_allclose(m["i2t_accuracy"], np.mean(logits.argmax(1) == np.arange(10)))
  np.testing.assert_allclose(m["t2i_accuracy"], np.mean(logits.argmax(0) == np.arange(10)))
  np.testing.assert_allclose(m["t"], np.exp(t_param), rtol=1e-6)
  np.testing.assert_allclose(m["b"], b)


def test_sigmoid_grads_finite_and_nonzero():
  za, zb = _pairs(3)
  grads = grad(lambda *a: O.sigmoid_loss(*a)[0], argnums=(0, 1, 2, 3))(
      za, zb, jnp.float32(np.log(10.0)), jnp.float32(-10.0))
  for g in grads:
    chex.assert_tree_all_finite(g)
    assert float(jnp.abs(g).max()) > 0


# ------------------------------------------------------------------------------ MLM / MIM / ITM


def test_mlm_matches_numpy():
  rng = np.random.RandomState(4)
  logits = rng.randn(3, 7, 11).astype(np.float32)
  targets = rng.randint(0, 11, size=(3, 7))
  targets[0, :3] = logits[0, :3].argmax(-1)  # some hits
  weights = (rng.rand(3, 7) < 0.4).astype(np.float32)
  weights[0, :3] = 1
  loss, m = jax.jit(O.mlm_loss)(logits, targets, weights)
  ref_loss, ref_acc = np_mlm(logits, targets, weights)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(m["accuracy"], ref_acc, rtol=1e-6)
  assert set(m) == {"loss", "accuracy"}


def test_mlm_nothing_masked_is_zero_not_nan():
  loss, m = O.mlm_loss(jnp.ones((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))
  assert float(loss) == 0.0 and float(m["accuracy"]) == 0.0


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mim_matches_numpy(norm_pix):
  rng = np.random.RandomState(5)
  pred = rng.randn(2, 9, 12).astype(np.float32)
  target = (3.0 + 2.0 * rng.randn(2, 9, 12)).astype(np.float32)
  weights = (rng.rand(2, 9) < 0.5).astype(np.float32)
  weights[:, 0] = 1
  loss, m = jax.jit(O.mim_loss, static_argnames="norm_pix")(pred, target, weights,
                                                            norm_pix=norm_pix)
  np.testing.assert_allclose(loss, np_mim(pred, target, weights, norm_pix), rtol=1e-5)
  np.testing.assert_allclose(m["loss"], loss)
  # Unmasked patches do not matter.
  pred2 = np.where(weights[..., None] > 0, pred, 1e3)
  np.testing.assert_allclose(O.mim_loss(pred2, target, weights, norm_pix=norm_pix)[0], loss,
                             rtol=1e-6)
  # No gradient into the target.
  g = grad(lambda t: O.mim_loss(pred, t, weights, norm_pix=norm_pix)[0])(target)
  assert float(jnp.abs(g).max()) == 0.0


def test_itm_loss_matches_numpy():
  rng = np.random.RandomState(6)
  logits = rng.randn(15, 2).astype(np.float32)
  labels = np.array([1] * 5 + [0] * 10)
  loss, m = jax.jit(O.itm_loss)(logits, labels)
  ref = np.mean(_np_logsumexp(logits.astype(np.float64), 1) - logits[np.arange(15), labels])
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(m["accuracy"], np.mean(logits.argmax(1) == labels))


# ------------------------------------------------------------------------------ hard negatives


def test_hard_negatives_never_positive_and_follow_softmax():
  rng = np.random.RandomState(7)
  b = 5
  sim = (3.0 * rng.randn(b, b)).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), 4000)
  neg_b, neg_a = jax.jit(jax.vmap(lambda k: masking.itm_hard_negatives(k, sim)))(keys)
  neg_b, neg_a = np.asarray(neg_b), np.asarray(neg_a)
  chex.assert_shape(neg_b, (4000, b))
  assert neg_b.dtype == np.int32
  assert not (neg_b == np.arange(b)).any() and not (neg_a == np.arange(b)).any()

  def expected(s):
    p = np.exp(s - s.max(1, keepdims=True))
    np.fill_diagonal(p, 0)
    return p / p.sum(1, keepdims=True)

  for neg, s in ((neg_b, sim), (neg_a, sim.T)):
    freq = np.stack([np.bincount(neg[:, i], minlength=b) for i in range(b)]) / len(neg)
    np.testing.assert_allclose(freq, expected(s), atol=0.03)


def test_hard_negatives_have_no_gradient():
  sim = jnp.asarray(np.random.RandomState(8).randn(4, 4), jnp.float32)
  g = grad(lambda s: jnp.sum(masking.itm_hard_negatives(jax.random.key(1), s)[0]
                                 .astype(jnp.float32) * s[:, 0]))(sim)
  assert np.isfinite(np.asarray(g)).all()


# ------------------------------------------------------------------------------ combine / check


def test_combine_losses_weights_prefixes_and_drops_zero():
  losses = {
      "contrastive": (jnp.float32(2.0), {"loss": jnp.float32(2.0), "i2t_accuracy": 0.5}),
      "mlm": (jnp.float32(3.0), {"loss": jnp.float32(3.0), "accuracy": 0.25}),
      "itm": (jnp.float32(7.0), {"loss": jnp.float32(7.0), "accuracy": 0.1}),
  }
  total, m = O.combine_losses(losses, {"contrastive": 1.0, "mlm": 0.5, "itm": 0.0, "mim": 1.0})
  assert float(total) == pytest.approx(3.5)
  assert float(m["loss"]) == pytest.approx(3.5)
  assert set(m) == {"loss", "contrastive/loss", "contrastive/i2t_accuracy", "mlm/loss",
                    "mlm/accuracy"}
  with pytest.raises(ValueError, match="no weight"):
    O.combine_losses(losses, {"contrastive": 1.0})


def _design(name, towers=True):
  return fusion_lib.design_of(fusion_lib.FusionConfig(
      name=name, unimodal_depth=(("a", int(towers)), ("b", int(towers)))))


def _check(design, weights):
  """The registry's checks of a loss-weight set against a design with modalities a, b."""
  active = O.check_weights(design, weights)
  for o in O.registered(active):
    for cap, why in o.requires.items():
      if not O.capability(design, cap, ("a", "b")):
        raise ValueError(f"objective {o.name!r} is not available with fusion {design.name!r}: "
                         + why.format(design=design.name, name=o.name))


def _one_line_error(design, weights):
  with pytest.raises(ValueError) as e:
    _check(design, weights)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_check_objectives_asks_the_design():
  """ITM needs a joint output; alignment needs per-modality towers; the rest always trains."""
  for name in fusion_lib.BUILTIN:
    for towers in (True, False):
      design = _design(name, towers)
      for obj in O.BUILTIN:
        w = {k: 0.0 for k in O.BUILTIN}
        w[obj] = 1.0
        ok = ((obj != "itm" or design.joint_output) and
              (obj not in ("contrastive", "sigmoid") or design.has_towers(("a", "b"))) and
              (obj != "prefix_lm" or design.prefix_lm))
        if ok:
          _check(design, w)
        else:
          msg = _one_line_error(design, w)
          assert obj in msg and name in msg and f"loss_weights.{obj}=0" in msg, msg
  # What the built-in designs declare.
  assert not _design("dual_encoder").joint_output
  assert all(_design(n).joint_output for n in fusion_lib.BUILTIN if n != "dual_encoder")
  towers_built_in = {n for n in fusion_lib.BUILTIN if _design(n, False).has_towers(("a", "b"))}
  assert towers_built_in == {"dual_encoder", "hier_multi_to_one"}
  # Zero weights do not count.
  _check(_design("dual_encoder"), {"contrastive": 1.0, "itm": 0.0})
  assert "valid names" in _one_line_error(_design("cross_attention"),
                                          {"mlm": 1.0, "captioning": 1.0})
  assert "positive weight" in _one_line_error(_design("cross_attention"), {"mlm": 0.0})
  _one_line_error(_design("cross_attention"), {"mlm": -1.0})
