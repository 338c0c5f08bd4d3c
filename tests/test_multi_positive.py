"""Multi-positive contrastive targets (objectives.multi_positive, UniCL-style) against a NumPy
reference, and equal on 1 and 8 simulated devices (through objectives.global_loss' shard_map).

The 8-device checks use the suite's 8 simulated CPU devices (tests/conftest.py).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mmjax import config_lib, configure, sharding
from mmjax import objectives as O
from tests.helpers import grad, value_and_grad

N_DEV = 8


# ------------------------------------------------------------------------------ reference

def _np_norm(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_logsumexp(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_multi_positive(za, zb, param, keys, max_scale=100.0):
  """(loss, i2t acc, t2i acc, mean positives): soft-target InfoNCE, target of row i uniform
  over {j : keys_j == keys_i}."""
  a, b = _np_norm(za), _np_norm(zb)
  keys = np.asarray(keys).reshape(len(keys), -1)
  pos = (keys[:, None, :] == keys[None, :, :]).all(-1)
  t = pos / pos.sum(1, keepdims=True)
  logits = min(np.exp(param), max_scale) * a @ b.T
  l_ab = np.mean(_np_logsumexp(logits, 1) - (t * logits).sum(1))
  l_ba = np.mean(_np_logsumexp(logits.T, 1) - (t * logits.T).sum(1))
  rows = np.arange(len(a))
  acc_ab = np.mean(pos[rows, logits.argmax(1)])
  acc_ba = np.mean(pos[rows, logits.T.argmax(1)])
  return 0.5 * (l_ab + l_ba), acc_ab, acc_ba, pos.sum(1).mean()


def _data(seed, n=32, d=16, classes=5, text_len=6):
  """Embeddings, labels [n], and text ids [n, L] with repeats (two templates per class)."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, classes, size=n)
  template = rng.randint(0, 2, size=n)
  centres = rng.randn(classes, d)
  za = (centres[labels] + 0.8 * rng.randn(n, d)).astype(np.float32)
  zb = (centres[labels] + 0.8 * rng.randn(n, d)).astype(np.float32)
  ids = np.zeros((n, text_len), np.int32)
  ids[:, 0] = 1
  ids[:, 1] = 10 + labels
  ids[:, 2] = 50 + template
  return za, zb, labels.astype(np.int32), ids


# ------------------------------------------------------------------------------ single device

@pytest.mark.parametrize("param", [np.log(1 / 0.07), np.log(3.0), np.log(200.0)])
@pytest.mark.parametrize("kind", ["label", "text"])
def test_multi_positive_matches_numpy(param, kind):
  za, zb, labels, ids = _data(0)
  keys = labels[:, None] if kind == "label" else ids
  loss, m = jax.jit(O.contrastive_loss)(za, zb, jnp.float32(param), keys)
  ref, acc_ab, acc_ba, npos = np_multi_positive(za, zb, param, keys)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(m["i2t_accuracy"], acc_ab)
  np.testing.assert_allclose(m["t2i_accuracy"], acc_ba)
  np.testing.assert_allclose(m["positives"], npos, rtol=1e-6)
  assert npos > 2  # the data has repeats: the targets really are multi-positive
  assert 0 < acc_ab < 1


def test_distinct_keys_are_plain_infonce_and_repeats_change_the_loss():
  za, zb, labels, _ = _data(1)
  param = jnp.float32(np.log(1 / 0.07))
  plain, m0 = O.contrastive_loss(za, zb, param)
  distinct, m1 = O.contrastive_loss(za, zb, param, np.arange(len(za))[:, None])
  np.testing.assert_allclose(distinct, plain, rtol=1e-6)
  for k in ("i2t_accuracy", "t2i_accuracy"):
    np.testing.assert_allclose(m1[k], m0[k])
  assert float(m1["positives"]) == 1.0
  g = grad(lambda a: O.contrastive_loss(a, zb, param, labels[:, None])[0])(za)
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0


def test_tighter_class_clusters_lower_only_the_multi_positive_loss():
  """Pulling every example towards its class centre raises plain InfoNCE (same-class examples
  are its negatives: false negatives) and lowers the multi-positive loss."""
  _, _, labels, _ = _data(5)
  rng = np.random.RandomState(6)
  centre = np.eye(8, dtype=np.float32)[labels]
  z = centre + 0.3 * rng.randn(*centre.shape).astype(np.float32)
  param = jnp.float32(np.log(1 / 0.07))

  def slope(keys):  # d/dt loss((1 - t) z + t centre) at t = 0, both towers
    f = lambda t: O.contrastive_loss((1 - t) * z + t * centre, (1 - t) * z + t * centre,
                                     param, keys)[0]
    return float(jax.jvp(f, (0.0,), (1.0,))[1])

  assert slope(None) > 0 > slope(labels[:, None]), (slope(None), slope(labels[:, None]))


def test_positive_keys_from_the_batch():
  cfg = configure.resolve_model(_config())
  _, _, labels, ids = _data(2, n=8)
  batch = {"image": np.zeros((8, 8, 8, 3), np.float32), "text": ids, "label": labels}
  assert O.positive_keys(batch, cfg, "none") is None
  np.testing.assert_array_equal(O.positive_keys(batch, cfg, "label"), labels[:, None])
  np.testing.assert_array_equal(O.positive_keys(batch, cfg, "text"), ids)
  with pytest.raises(ValueError, match="needs a 'label'") as e:
    O.positive_keys({k: v for k, v in batch.items() if k != "label"}, cfg, "label")
  assert "\n" not in str(e.value)


def _config(**objectives):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({
      "fusion": "dual_encoder", "width": 32, "heads": 2, "mlp_dim": 64, "embed_dim": 16,
      "depth": {"unimodal": 1},
      "modalities": {"image": {"kind": "image", "patch": 4, "grid": (2, 2),
                               "input_shape": (8, 8, 3)},
                     "text": {"kind": "text", "vocab_size": 261, "max_len": 6}}})
  c.loss_weights = ml_collections.ConfigDict({"contrastive": 1.0})
  c.objectives = ml_collections.ConfigDict(objectives)
  c.data = ml_collections.ConfigDict({"image_size": 8, "text_len": 6})
  return c


def test_config_option_is_checked():
  assert configure.resolve(_config()).objectives.multi_positive == "none"
  assert configure.resolve(_config(multi_positive="label")).objectives.multi_positive == "label"
  for bad, match in (({"multi_positive": "yes"}, "unknown objectives.multi_positive"),):
    with pytest.raises(config_lib.ConfigError, match=match) as e:
      configure.resolve(_config(**bad))
    assert "\n" not in str(e.value)
  c = _config(multi_positive="text")
  c.loss_weights.sigmoid = 1.0
  with pytest.raises(config_lib.ConfigError, match="contrastive loss only"):
    configure.resolve(c)


# ------------------------------------------------------------------------------ 1 vs 8 devices

def _run(check):
  """Run an 8-device check; the suite's conftest gives every test process 8 CPU devices."""
  assert jax.device_count() >= N_DEV, (
      f"{jax.device_count()} devices: run under the suite's conftest (8 simulated devices)")
  check()


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def check_shard_map_equals_single_device():
  """contrastive_loss(keys=...) inside shard_map over 1-D and 2-D batch axes (check_vma on and
  off) gives the single-device value, gradients and metrics."""
  za, zb, labels, ids = _data(3)
  param = jnp.float32(np.log(1 / 0.07))
  for keys in (labels[:, None], ids):
    fn = lambda a, b, k, s, axis_name=None: O.contrastive_loss(a, b, s, k, axis_name=axis_name)
    ref_val, ref_g = value_and_grad(lambda *x: fn(*x)[0], (0, 1, 3))(za, zb, keys, param)
    ref_m = jax.jit(fn)(za, zb, keys, param)[1]
    for shape, names, check_vma in (((8,), ("data",), True), ((4, 2), ("data", "fsdp"), False)):
      mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(names))
      axis = names if len(names) > 1 else names[0]
      spec = P(axis)
      mapped = jax.shard_map(lambda *x: fn(*x, axis_name=axis), mesh=mesh,
                             in_specs=(spec, spec, spec, P()), out_specs=(P(), P()),
                             check_vma=check_vma)
      sh = NamedSharding(mesh, spec)
      args = (*(jax.device_put(x, sh) for x in (za, zb, keys)), param)
      val, g = jax.jit(jax.value_and_grad(lambda *x: mapped(*x)[0], (0, 1, 3)))(*args)
      m = jax.jit(mapped)(*args)[1]
      _close(val, ref_val)
      for gi, rg in zip(g, ref_g):
        _close(gi, rg)
      assert set(m) == set(ref_m)
      for k in m:
        _close(m[k], ref_m[k])


def check_global_loss_equals_single_device():
  """losses_from_outputs on the train step's mesh (8 devices: global_loss' shard_map) equals
  mesh=None, in loss, metrics and gradients."""
  za, zb, labels, _ = _data(4)
  obj = config_lib.ObjectivesConfig(weights=(("contrastive", 1.0),), multi_positive="label")

  def loss(za, zb, scale, mesh):
    out = {"contrastive": {"embeddings": {"image": za, "text": zb},
                           "pairs": [("image", "text")], "logit_scale": scale,
                           "positive_keys": jnp.asarray(labels)[:, None]}}
    return O.losses_from_outputs(out, obj, mesh)

  param = jnp.float32(np.log(1 / 0.07))
  ref = jax.jit(lambda *a: loss(*a, None))(za, zb, param)
  ref_g = grad(lambda *a: loss(*a, None)[0], (0, 1, 2))(za, zb, param)
  assert float(ref[1]["contrastive/positives"]) > 2
  for mesh_cfg in ({"data": 8, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 4, "tensor": 1}):
    mesh = sharding.make_mesh(mesh_cfg)
    sh = sharding.batch_sharding(mesh)
    args = (jax.device_put(za, sh), jax.device_put(zb, sh), param)
    with jax.set_mesh(mesh):
      got = jax.jit(lambda *a: loss(*a, mesh))(*args)
      got_g = jax.jit(jax.grad(lambda *a: loss(*a, mesh)[0], (0, 1, 2)))(*args)
    _close(got[0], ref[0])
    assert set(got[1]) == set(ref[1])
    for k in got[1]:
      _close(got[1][k], ref[1][k])
    for g, rg in zip(got_g, ref_g):
      _close(g, rg)


def test_multi_positive_shard_map_equals_single_device():
  _run(check_shard_map_equals_single_device)


def test_multi_positive_global_loss_equals_single_device():
  _run(check_global_loss_equals_single_device)

