"""Gradient accumulation (mmjax.accumulation): grad_accum_negatives='batch' gives the whole
batch's loss and gradients from micro-batches, for the batch-level losses (contrastive,
sigmoid, ITM's hard negatives) on one device and sharded over 8 simulated devices; 'micro' is each micro-batch's own
loss, and it too compiles on a sharded mesh."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import accumulation, configure, models, objectives, sharding, train_lib
from tests.helpers import random_batch, run_entry, tiny_config

K = 4


def _dual(weights, batch_size=8, **kw):
  over = {"loss_weights.itm": 0.0, "loss_weights.mlm": 0.0, "loss_weights.mim": 0.0,
          "loss_weights.contrastive": 0.0, "batch_size": batch_size, **kw}
  over.update({f"loss_weights.{k}": v for k, v in weights.items()})
  return tiny_config("dual_encoder", **over)


def test_split_and_join_are_inverse_and_strided():
  x = jnp.arange(12 * 3).reshape(12, 3)
  micro = accumulation.split({"x": x}, 4)["x"]
  assert micro.shape == (4, 3, 3)
  np.testing.assert_array_equal(micro[1], x[1::4])
  np.testing.assert_array_equal(accumulation.join(micro), x)


def _batch_64_as_8(raw):
  """(whole, batch, micro): (loss, metrics, grads) of batch 64 in one step, as 8 micro-batches
  in 'batch' mode (asserted equal to the whole, loss and every gradient), and in 'micro'
  mode, on one device."""
  cfg = configure.resolve(raw)
  model = models.build_model(cfg)
  mesh = sharding.make_mesh(raw.mesh, jax.devices()[:1])
  params = model.init(jax.random.key(0), random_batch(raw), method=model.init_all)
  batch = jax.tree.map(jnp.asarray, random_batch(raw, seed=3))
  rng = jax.random.key(5)
  grad_fn = jax.value_and_grad(lambda p, b, r: objectives.pretraining_loss(
      model, p, b, r, cfg.objectives, mesh), has_aux=True)
  (want, want_m), want_g = jax.jit(lambda p: grad_fn(p, batch, rng))(params)
  micro = accumulation.split(batch, 8)
  got = jax.jit(lambda p: accumulation.cached_outputs(
      model, cfg, mesh, lambda q: q, p, micro, rng, 8))(params)
  np.testing.assert_allclose(float(got[0]), float(want), rtol=1e-5)
  chex.assert_trees_all_close(got[1], want_m, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got[2], want_g, rtol=1e-4, atol=1e-5)
  own = jax.jit(lambda p: accumulation.micro_average(grad_fn, p, micro, rng, 8))(params)
  return (want, want_m, want_g), got, own


@pytest.mark.parametrize("loss", ["contrastive", "sigmoid"])
def test_batch_mode_is_the_whole_batch_and_micro_mode_is_not(loss):
  """Batch 64 as 8 micro-batches of 8: the loss, metrics and every gradient of batch 64."""
  (want, _, want_g), (_, _, got_g), (own, _, own_g) = _batch_64_as_8(
      _dual({loss: 1.0}, batch_size=64))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(got_g)) > 1e-3
  # each micro-batch with only its own 8 examples as negatives is a different loss (sigmoid's
  # bias of -10 at init makes its negatives' part of the loss small, not its gradient)
  assert abs(float(own) - float(want)) > 1e-4
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), own_g, want_g))
  assert max(gap) > 1e-2


def _step(cfg, devices, batch):
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  state, metrics = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)(state, batch)
  return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_accumulated_step_on_a_sharded_mesh_equals_one_big_batch_on_one_device():
  """mesh.data=4 x mesh.fsdp=2, batch 64 in 8 micro-batches of 8 (one example per device):
  the sigmoid ring over the mesh sees all 64 examples; the step equals the unaccumulated one
  on one device. 'micro' compiles on the same mesh (it used to fail in SPMD partitioning)."""
  one = _dual({"sigmoid": 1.0}, batch_size=64, **{"mesh.data": 1})
  batch = random_batch(one, seed=1)
  want_p, want_m = _step(one, jax.devices()[:1], batch)
  sharded = {"mesh.data": 4, "mesh.fsdp": 2, "grad_accum_steps": 8}
  got_p, got_m = _step(_dual({"sigmoid": 1.0}, batch_size=64, **sharded), jax.devices()[:8],
                       batch)
  for k in ("loss", "grad_norm"):
    np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-4)
  chex.assert_trees_all_close(got_p, want_p, atol=2e-5)
  _, micro_m = _step(_dual({"sigmoid": 1.0}, batch_size=64, grad_accum_negatives="micro",
                           **sharded), jax.devices()[:8], batch)
  assert np.isfinite(micro_m["loss"]) and abs(micro_m["loss"] - want_m["loss"]) > 1e-3


def test_every_objective_of_a_fused_design_accumulates_and_frozen_parameters_stay():
  """hier_multi_to_one with contrastive, ITM, MLM and MIM in 2 micro-batches, the text tower
  frozen: a finite step that moves the image side and leaves the text tower bitwise."""
  cfg = tiny_config(grad_accum_steps=2, freeze="text")
  assert set(configure.resolve(cfg).objectives.active) >= {"contrastive", "itm", "mlm", "mim"}
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  before = jax.device_get(state.params)
  mask = train_lib.frozen_mask(configure.resolve(cfg), before)
  step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
  for seed in range(2):  # the warmup's first learning rate is 0
    state, metrics = step(state, random_batch(cfg, seed=seed))
  after = jax.device_get(state.params)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["skipped"]) == 0.0
  pairs = jax.tree.leaves(jax.tree.map(lambda a, b, f: (bool(f), bool(np.any(a != b))),
                                       after, before, mask), is_leaf=lambda x: isinstance(x, tuple))
  assert any(f for f, _ in pairs) and not any(m for f, m in pairs if f)
  assert any(m for f, m in pairs if not f)


def test_bench_counts_the_extra_forward_of_exact_accumulation():
  """mmjax.bench.accumulation as a user runs it: a row per variant; the hardware FLOPs count
  every micro-batch (the loop is unrolled for XLA's count), so 'batch' (a second forward per
  micro-batch) counts about 4/3 of the unaccumulated step and 'micro' about the same."""
  r = run_entry(["-m", "mmjax.bench.accumulation", "--config=tests/tiny_config.py",
                 "--config.mesh.data=1", "--config.model.fusion=dual_encoder",
                 "--config.loss_weights.itm=0", "--config.loss_weights.mlm=0",
                 "--config.loss_weights.mim=0", "--config.batch_size=8", "--accum=2",
                 "--steps=1", "--warmup=0", "--repeats=1"])
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads(r.stdout.strip().splitlines()[-1])
  assert [(x["grad_accum_steps"], x["grad_accum_negatives"]) for x in rows] == [
      (1, "batch"), (2, "batch"), (2, "micro")]
  whole, exact, micro = (x["hw_flops_per_step_per_device"] for x in rows)
  assert 1.2 < exact / whole < 1.45 and 0.9 < micro / whole < 1.1
  assert len({x["model_flops_per_step_per_device"] for x in rows}) == 1
  assert all(x["memory_bytes_per_device"] > 0 and x["step_s"] > 0 for x in rows)


def _fused_itm(batch_size=64, **kw):
  return tiny_config("hier_multi_to_one", **{"loss_weights.mlm": 0.0, "loss_weights.mim": 0.0,
                                             "batch_size": batch_size, **kw})


def test_itm_in_batch_mode_mines_the_whole_batchs_hard_negatives():
  """hier_multi_to_one with contrastive + ITM, batch 64 as 8 micro-batches: ITM's hard
  negatives are mined over all 64 examples (a micro-batch's image paired with another
  micro-batch's caption) and every pair runs through the interaction, so the loss, metrics
  and every gradient are batch 64's; 'micro' mining is not."""
  raw = _fused_itm()
  assert set(configure.resolve(raw).objectives.active) == {"contrastive", "itm"}
  (_, want_m, want_g), _, (_, own_m, _) = _batch_64_as_8(raw)
  itm_head = want_g["params"]["itm_head"]["kernel"]
  itm_head = getattr(itm_head, "value", itm_head)
  assert float(jnp.abs(itm_head).max()) > 1e-3  # the head's gradient is in the comparison
  assert abs(float(own_m["itm/loss"]) - float(want_m["itm/loss"])) > 1e-4


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_itm_accumulates_exactly_on_a_sharded_mesh():
  """The same on mesh.data=4 x mesh.fsdp=2 (batch 64 as 8 micro-batches of 8, one example
  per device): the train step equals one device's unaccumulated step."""
  one = _fused_itm(**{"mesh.data": 1})
  batch = random_batch(one, seed=1)
  want_p, want_m = _step(one, jax.devices()[:1], batch)
  got_p, got_m = _step(_fused_itm(**{"mesh.data": 4, "mesh.fsdp": 2, "grad_accum_steps": 8}),
                       jax.devices()[:8], batch)
  for k in ("loss", "grad_norm", "itm/loss"):
    np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-4)
  chex.assert_trees_all_close(got_p, want_p, atol=2e-5)
