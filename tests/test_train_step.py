"""The sharded train step: identical on 1 and 8 devices for every mesh, params really sharded,
NaN updates never applied, accumulation exact, decay mask right."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import configure, models, objectives, sharding, train_lib
from tests.helpers import apply, init, random_batch, tiny_config


def _run(config, n_devices, steps=3):
  model = models.build_model(config)
  tx, schedule = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:n_devices])
  state, shard = train_lib.create_state(config, model, tx, mesh)
  step = train_lib.make_train_step(config, model, tx, schedule, mesh, shard)
  losses, metrics = [], None
  for i in range(steps):
    batch = jax.device_put(random_batch(config, seed=i), sharding.batch_sharding(mesh))
    state, metrics = step(state, batch)
    losses.append({k: float(v) for k, v in metrics.items()})
  return losses, state, mesh


@functools.lru_cache(maxsize=None)
def _single_device_reference():
  losses, state, _ = _run(tiny_config(), 1)
  return losses, jax.device_get(state.params)


@pytest.mark.parametrize("mesh", [(2, 2, 2), (8, 1, 1), (1, 8, 1)])
def test_sharded_equals_single_device(mesh):
  cfg = tiny_config()
  ref_losses, ref_params = _single_device_reference()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
  losses, state, m = _run(cfg, 8)
  for ref, got in zip(ref_losses, losses):
    for k in ("loss", "contrastive/loss", "itm/loss", "mlm/loss", "mim/loss", "grad_norm"):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
  chex.assert_trees_all_close(jax.device_get(state.params), ref_params, atol=1e-5, rtol=1e-5)
  kernel = state.params["params"]["fusion"]["joint"]["layer_0"]["mlp"]["fc1"]["kernel"]
  spec = tuple(kernel.sharding.spec)
  data, fsdp, tensor = mesh
  assert spec[0] == ("fsdp" if fsdp > 1 else spec[0])
  if fsdp > 1:
    assert spec == ("fsdp", "tensor") if tensor > 1 else spec[0] == "fsdp"
  if tensor > 1:
    q = state.params["params"]["fusion"]["joint"]["layer_0"]["attn"]["query_kernel"]
    assert tuple(q.sharding.spec)[1] == "tensor"  # heads over tensor
  if fsdp == 1 and tensor == 1:
    assert kernel.sharding.is_fully_replicated
  # Optimizer moments follow their parameters.
  mu = state.opt_state[1][0].mu["params"]["fusion"]["joint"]["layer_0"]["mlp"]["fc1"]["kernel"]
  assert mu.sharding.spec == kernel.sharding.spec


@pytest.mark.parametrize("fusion", ["dual_encoder", "cross_attention", "bottleneck"])
def test_other_fusions_train(fusion):
  cfg = tiny_config(fusion)
  if fusion == "dual_encoder":
    cfg.loss_weights.sigmoid = 1.0
  if fusion != "bottleneck":  # a narrower text tower (CLIP's layout; tower_proj for fusion)
    cfg.model.modalities.text.update({"width": 16, "heads": 2})
  losses, state, _ = _run(cfg, 1, steps=2)
  assert all(np.isfinite(l["loss"]) for l in losses)
  assert int(state.step) == 2


def test_nan_update_is_never_applied():
  cfg = tiny_config()
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  before = jax.device_get(state.params)
  step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
  bad = random_batch(cfg)
  bad["image"][0, 0, 0, 0] = np.nan
  state, metrics = step(state, bad)
  assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  chex.assert_trees_all_equal(jax.device_get(state.params), before)
  state, metrics = step(state, random_batch(cfg))
  assert float(metrics["skipped"]) == 0.0


def test_micro_accumulation_averages_micro_batch_gradients():
  """grad_accum_negatives='micro': the mean of the micro-batches' own gradients (micro-batch i
  is rows i::K), one AdamW update."""
  cfg = tiny_config(**{"loss_weights.itm": 0.0, "optimizer.warmup_steps": 0})
  cfg.grad_accum_steps = 2
  cfg.grad_accum_negatives = "micro"
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  params0 = jax.device_get(state.params)
  opt0 = jax.device_get(state.opt_state)
  batch = random_batch(cfg)
  step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
  state, _ = step(state, batch)
  rng = jax.random.fold_in(jax.random.key(cfg.seed), 0)
  grads = []
  for i in range(2):
    micro = jax.tree.map(lambda x: x[i::2], batch)
    g = jax.jit(jax.grad(lambda p: objectives.pretraining_loss(
        model, p, micro, jax.random.fold_in(rng, i), configure.resolve(cfg), mesh)[0]))(params0)
    grads.append(g)
  g = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  updates, _ = tx.update(g, opt0, params0)
  want = optax.apply_updates(params0, updates)
  chex.assert_trees_all_close(jax.device_get(state.params), want, atol=1e-6)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), want, params0))
  assert max(moved) > 1e-4  # the update is not empty, so the comparison can fail


def test_weight_decay_mask():
  cfg = tiny_config()
  model = models.build_model(cfg)
  params = init(model, jax.random.key(0), models.dummy_batch(cfg), method=model.init_all)
  mask = train_lib.weight_decay_mask(nn.meta.unbox(params["params"]))
  assert mask["fusion"]["joint"]["layer_0"]["mlp"]["fc1"]["kernel"]
  assert not mask["fusion"]["joint"]["layer_0"]["mlp"]["fc1"]["bias"]
  assert not mask["embed_text"]["token_embedding"]
  assert not mask["embed_image"]["pos_embedding"]
  assert not mask["fusion"]["joint"]["ln_final"]["scale"]


def test_mesh_errors():
  with pytest.raises(ValueError, match="needs 6 devices but 8 are present"):
    sharding.mesh_shape({"data": 2, "fsdp": 3, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="only one axis may be -1"):
    sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


def test_dropout_trains_and_evaluation_is_deterministic():
  """model.dropout > 0: the train step's losses differ from dropout 0 (masks drawn per step),
  yet evaluation (no dropout rng) gives exactly the dropout-0 outputs for the same params."""
  base = tiny_config()
  drop = tiny_config(**{"model.dropout": 0.2, "model.scan": True, "model.remat": "full"})
  batch = random_batch(base)
  mesh = sharding.make_mesh(base.mesh, jax.devices()[:1])
  losses = {}
  for name, cfg in (("base", base), ("drop", drop)):
    model = models.build_model(cfg)
    tx, schedule = train_lib.make_optimizer(cfg)
    state, shard = train_lib.create_state(cfg, model, tx, mesh)
    step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
    with jax.set_mesh(mesh):
      state, metrics = step(state, batch)
    losses[name] = float(metrics["loss"])
    assert np.isfinite(losses[name]) and not metrics["skipped"]
    if name == "drop":
      params = state.params
      evaluate = lambda m: apply(m, params, {k: batch[k] for k in m.modalities})["joint"]
      np.testing.assert_allclose(evaluate(model), evaluate(models.build_model(
          tiny_config(**{"model.scan": True, "model.remat": "full"}))), rtol=1e-6, atol=1e-6)
  assert abs(losses["base"] - losses["drop"]) > 1e-3, losses
