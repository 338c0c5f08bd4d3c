"""Global-batch objectives across 8 simulated CPU devices equal the single-device ones.

The checks use the suite's 8 simulated CPU devices (tests/conftest.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mmjax import masking
from mmjax import objectives as O

N_DEV = 8
# (mesh shape, axis names, axis types, check_vma): 1-D and 2-D (('data', 'fsdp') tuple axis)
# meshes, Explicit and Auto axes, with and without vma checking (the train step uses False).
MESHES = [((8,), ("data",), AxisType.Explicit, True),
          ((8,), ("data",), AxisType.Auto, False),
          ((4, 2), ("data", "fsdp"), AxisType.Auto, True),
          ((4, 2), ("data", "fsdp"), AxisType.Explicit, False)]


def _run(check):
  """Run an 8-device check; the suite's conftest gives every test process 8 CPU devices."""
  assert jax.device_count() >= N_DEV, (
      f"{jax.device_count()} devices: run under the suite's conftest (8 simulated devices)")
  check()


def _mesh(shape, names, types, devices=None):
  return jax.make_mesh(shape, names, axis_types=(types,) * len(names), devices=devices)


def _axis(names):
  return names if len(names) > 1 else names[0]


def _data(seed, n=32, d=16):
  rng = np.random.RandomState(seed)
  za = rng.randn(n, d).astype(np.float32)
  zb = (za + 1.2 * rng.randn(n, d)).astype(np.float32)
  return jnp.asarray(za), jnp.asarray(zb)


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _compare_global(loss_fn, scalars):
  za, zb = _data(0)
  n_scal = len(scalars)
  argnums = tuple(range(2 + n_scal))
  ref_val, ref_grads = jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a)[0], argnums))(
      za, zb, *scalars)
  ref_metrics = jax.jit(loss_fn)(za, zb, *scalars)[1]
  assert any(float(v) > 0 for k, v in ref_metrics.items() if "accuracy" in k)
  for shape, names, types, check_vma in MESHES:
    mesh = _mesh(shape, names, types)
    axis = _axis(names)
    spec = P(axis)
    mapped = jax.shard_map(lambda *a: loss_fn(*a, axis_name=axis), mesh=mesh,
                           in_specs=(spec, spec) + (P(),) * n_scal, out_specs=(P(), P()),
                           check_vma=check_vma)
    sh = NamedSharding(mesh, spec)
    args = (jax.device_put(za, sh), jax.device_put(zb, sh), *scalars)
    val, grads = jax.jit(jax.value_and_grad(lambda *a: mapped(*a)[0], argnums))(*args)
    metrics = jax.jit(mapped)(*args)[1]
    where = f"{names} {types} check_vma={check_vma}"
    _close(val, ref_val)
    for g, rg in zip(grads, ref_grads):
      assert g.shape == rg.shape, where
      _close(g, rg)
    assert set(metrics) == set(ref_metrics), where
    for k in metrics:
      _close(metrics[k], ref_metrics[k])


def check_contrastive_global_batch():
  _compare_global(O.contrastive_loss, (jnp.float32(np.log(1 / 0.07)),))
  _compare_global(O.contrastive_loss, (jnp.float32(np.log(150.0)),))  # clamped


def check_sigmoid_ring_global_batch():
  _compare_global(O.sigmoid_loss, (jnp.float32(np.log(10.0)), jnp.float32(-10.0)))
  _compare_global(O.sigmoid_loss, (jnp.float32(1.0), jnp.float32(-2.0)))


def check_hard_negatives_sharded():
  mesh = _mesh((8,), ("data",), AxisType.Auto)
  za, zb = _data(1, n=64)
  sim = 5.0 * (za @ zb.T)

  def local(sim_ab, sim_ba, key):
    return masking.itm_hard_negatives(key, sim_ab, sim_ba=sim_ba, axis_name="data")

  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P()),
                             out_specs=(P("data"), P("data"))))
  for seed in range(20):
    neg_b, neg_a = map(np.asarray, fn(sim, sim.T, jax.random.key(seed)))
    assert neg_b.shape == (64,) and neg_a.shape == (64,)
    assert (neg_b != np.arange(64)).all() and (neg_a != np.arange(64)).all()
    assert neg_b.min() >= 0 and neg_b.max() < 64
    # Every device samples from all global columns (not only its own block).
    assert len(np.unique(neg_b // 8)) > 1


def _peak_bytes(loss_fn, n_scal, n_dev, per_device=256, dim=64):
  mesh = _mesh((n_dev,), ("data",), AxisType.Explicit, devices=jax.devices()[:n_dev])
  mapped = jax.shard_map(lambda *a: loss_fn(*a, axis_name="data"), mesh=mesh,
                         in_specs=(P("data"),) * 2 + (P(),) * n_scal, out_specs=(P(), P()))
  step = jax.value_and_grad(lambda *a: mapped(*a)[0], tuple(range(2 + n_scal)))
  emb = jax.ShapeDtypeStruct((per_device * n_dev, dim), jnp.float32,
                             sharding=NamedSharding(mesh, P("data")))
  scal = jax.ShapeDtypeStruct((), jnp.float32)
  ma = jax.jit(step).lower(emb, emb, *([scal] * n_scal)).compile().memory_analysis()
  return ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes


def check_memory_does_not_grow():
  ring = {n: _peak_bytes(O.sigmoid_loss, 2, n) for n in (2, 4, 8)}
  gather = {n: _peak_bytes(O.contrastive_loss, 1, n) for n in (2, 4, 8)}
  print("per-device bytes (value_and_grad, 256 rows x 64 per device):")
  print("  sigmoid ring         ", ring)
  print("  contrastive gather   ", gather)
  assert ring[8] <= ring[4] <= ring[2] * 1.05, ring
  assert gather[8] > 1.8 * gather[4] > 3.2 * gather[2], gather


def test_contrastive_global_batch_equals_single_device():
  _run(check_contrastive_global_batch)


def test_sigmoid_ring_equals_single_device():
  _run(check_sigmoid_ring_global_batch)


def test_hard_negatives_sharded():
  _run(check_hard_negatives_sharded)


def test_sigmoid_memory_does_not_grow_with_devices():
  _run(check_memory_does_not_grow)

