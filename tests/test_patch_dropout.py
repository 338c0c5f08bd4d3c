"""Patch dropout (model.patch_dropout, FLIP): in training each example keeps a random subset of
its patch tokens (positions kept with them), evaluation encodes all of them, a MIM pass keeps
every position, the FLOP count follows the tokens encoded, and every fusion design trains."""
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax

from mmjax import configure, fusion, models, objectives, sharding, tokenizers, train_lib, trainer
from tests.helpers import random_batch, tiny_config
from tests.test_train_loop import _cfg as _train_cfg, _one_device


def test_embedder_keeps_a_random_subset_of_its_tokens_in_training_only():
  emb = tokenizers.ImagePatchEmbedder(width=8, patch=4, grid=(4, 4), patch_dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  params = emb.init(jax.random.key(1), x)
  full, _ = emb.apply(params, x)  # no 'dropout' rng: evaluation
  assert full.shape == (3, 17, 8)
  dropped, mask = emb.apply(params, x, rngs={"dropout": jax.random.key(2)})
  assert dropped.shape == (3, 9, 8) and mask.shape == (3, 9) and bool(mask.all())
  chex.assert_trees_all_equal(dropped[:, 0], full[:, 0])  # [CLS] stays
  kept = []
  for b in range(3):  # every kept token is one of the example's own, in patch order
    eq = np.all(np.isclose(np.asarray(dropped[b, 1:])[:, None], np.asarray(full[b, 1:])[None]),
                axis=-1)
    assert (eq.sum(axis=1) == 1).all()
    idx = eq.argmax(axis=1)
    assert (np.diff(idx) > 0).all()
    kept.append(tuple(idx))
  assert len(set(kept)) > 1  # examples draw their own subsets
  masked, _ = emb.apply(params, x, mim_mask=jnp.zeros((3, 16), bool),
                        rngs={"dropout": jax.random.key(2)})
  assert masked.shape == (3, 17, 8)  # a MIM pass needs every position
  assert tokenizers.kept_patches(196, 0.75) == 49 and tokenizers.kept_patches(4, 0.99) == 1


def _cfg(fusion_name="dual_encoder", rate=0.5, **kw):
  c = tiny_config(fusion_name, **kw)
  c.model.patch_dropout = rate
  return c


def test_evaluation_is_unchanged_and_training_flops_follow_the_tokens():
  """The contrastive embeddings without a dropout rng equal those of the same parameters with
  patch_dropout=0; the step's model FLOPs fall with the image tokens dropped."""
  on, off = _cfg(rate=0.75), _cfg(rate=0.0)
  batch = random_batch(on)
  m_on, m_off = models.build_model(configure.resolve(on)), models.build_model(
      configure.resolve(off))
  params = m_off.init(jax.random.key(0), batch, method=m_off.init_all)
  embed = lambda m: m.apply(params, batch, method=lambda mod, b: mod.contrastive_embedding(  # noqa: E731
      mod.encode(mod.embed(b))))
  chex.assert_trees_all_close(embed(m_on), embed(m_off), atol=1e-6)
  mesh = sharding.make_mesh(on.mesh, jax.devices()[:1])
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  flops = {r: train_lib.flop_counts(configure.resolve(c), mesh, shapes)[0]
           for r, c in ((0.75, on), (0.0, off))}
  assert flops[0.75] < 0.9 * flops[0.0]


@pytest.mark.parametrize("name", fusion.names())
def test_every_fusion_design_trains_with_patch_dropout(name):
  """The loss and gradients of each design with its default objectives (MIM included where it
  applies) trace with patch dropout on, to a scalar loss and gradients shaped like the
  parameters (shapes only: the dropped token count is what could break a design); the
  hier_multi_to_one step runs for real, with MIM beside the dropped clean pass."""
  cfg = _cfg(name)
  if fusion.get(name).position_aligned:  # early_sum adds tokens position by position
    cfg.model.early_sum_align = "pad"
    with pytest.raises(configure.ConfigError, match="patch dropout.*position by position"):
      configure.resolve(cfg)
    return
  rcfg = configure.resolve(cfg)
  model = models.build_model(rcfg)
  batch = jax.tree.map(jnp.asarray, random_batch(cfg))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, method=model.init_all))
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  grad = jax.value_and_grad(lambda p: objectives.pretraining_loss(
      model, p, batch, jax.random.key(1), rcfg.objectives, mesh), has_aux=True)
  (loss, _), grads = jax.eval_shape(grad, params)
  assert loss.shape == () and jax.tree.structure(grads) == jax.tree.structure(params)
  if name == "hier_multi_to_one":
    assert "mim" in rcfg.objectives.active
    real = model.init(jax.random.key(0), batch, method=model.init_all)
    (loss, _), grads = jax.jit(grad)(real)
    assert np.isfinite(float(loss))
    g = jax.tree.leaves(grads["params"]["embed_image"]["proj"])
    assert max(float(jnp.abs(x).max()) for x in g) > 0


def test_unmasked_phase_switches_at_its_step_and_resumes_exactly(tmp_path, capsys):
  """unmasked_steps=2 of 5: steps 4 and 5 encode every patch (a second executable, its FLOPs
  logged), and a run stopped at step 4 (after the switch) and resumed ends on the
  uninterrupted run's parameters, bit for bit."""
  cfg = _train_cfg(total_steps=5, unmasked_steps=2, **{"model.patch_dropout": 0.75,
                                                      "checkpoint.every_steps": 100})
  full = _one_device(lambda: trainer.train(cfg, str(tmp_path / "a")))
  out = capsys.readouterr().out
  assert "unmasked from step 3: every patch encoded" in out, out[-2000:]
  masked = float(re.search(r"FLOPs\s+([\d.]+) GFLOP model", out).group(1))
  unmasked = float(re.search(r"every patch encoded, ([\d.]+) GFLOP model", out).group(1))
  assert unmasked > 1.3 * masked  # a quarter of the 16 image patches before, all after
  records = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl") if '"loss"' in x]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  _one_device(lambda: trainer.train(cfg, str(tmp_path / "b"), stop_after=4, log_to_stdout=False))
  resumed = _one_device(lambda: trainer.train(cfg, str(tmp_path / "b"), log_to_stdout=False))
  chex.assert_trees_all_equal(jax.device_get(resumed["state"].params),
                              jax.device_get(full["state"].params))
  with pytest.raises(configure.ConfigError, match="unmasked_steps=2 ends patch dropout"):
    configure.resolve(_train_cfg(unmasked_steps=2))


def test_frame_order_refuses_dropped_tubelets():
  """Frame ordering pools each tubelet group by position: one line, not a wrong reshape."""
  c = mmjax.load_config("configs/video_order.py")
  c.model.patch_dropout = 0.5
  with pytest.raises(configure.ConfigError, match="frame_order pools each tubelet group"):
    configure.resolve(c)


def _first_step_loss(cfg, devices):
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  _, metrics = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)(
      state, random_batch(cfg, seed=4))
  return float(metrics["loss"])


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_dropped_patches_are_the_same_sharded_and_with_the_chunked_kernel():
  """The tokens dropped depend on the step's rng only: the first loss of a data=4 x fsdp=2 mesh
  equals one device's, and the chunked attention kernel gives the dense one's."""
  base = {"batch_size": 16, "mesh.data": 1}
  want = _first_step_loss(_cfg(**base), jax.devices()[:1])
  sharded = _first_step_loss(_cfg(**{**base, "mesh.data": 4, "mesh.fsdp": 2}), jax.devices()[:8])
  chunked = _first_step_loss(_cfg(**{**base, "attention.impl": "chunked",
                                     "attention.chunk_size": 4}), jax.devices()[:1])
  none = _first_step_loss(_cfg(rate=0.0, **base), jax.devices()[:1])
  np.testing.assert_allclose([sharded, chunked], [want, want], rtol=2e-5)
  assert abs(none - want) > 1e-4  # the tokens dropped change the loss


@pytest.mark.parametrize("mode", ["grid", "block"])
def test_structured_modes_keep_a_lattice_or_a_block(mode):
  """patch_dropout_mode: 'grid' keeps a lattice (0.5: a checkerboard; 0.75: one patch in four,
  every row and column alike), 'block' one contiguous block around a random centre; each
  example draws its own offset or centre; evaluation keeps every patch."""
  emb = tokenizers.ImagePatchEmbedder(width=8, patch=4, grid=(8, 8), patch_dropout=0.75,
                                      patch_dropout_mode=mode, add_cls=False, pos="sincos")
  x = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
  params = emb.init(jax.random.key(1), x)
  full = np.asarray(emb.apply(params, x)[0])
  kept = np.asarray(emb.apply(params, x, rngs={"dropout": jax.random.key(2)})[0])
  assert kept.shape == (6, 16, 8)
  picks = []
  for b in range(6):
    idx = np.asarray([int(np.argmin(np.abs(full[b] - t).sum(-1))) for t in kept[b]])
    rows, cols = idx // 8, idx % 8
    if mode == "grid":  # (2 row + col + o) mod 4 == 0: 2 per row, spaced 4 apart
      assert len(set(((2 * rows + cols) % 4).tolist())) == 1, idx
      assert np.bincount(rows, minlength=8).tolist() == [2] * 8
    else:  # a 4 x 4 block: its rows and columns are contiguous ranges
      assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3, idx
    picks.append(tuple(idx))
  assert len(set(picks)) > 1
  half = tokenizers.ImagePatchEmbedder(width=8, patch=4, grid=(8, 8), patch_dropout=0.5,
                                       patch_dropout_mode="grid", add_cls=False, pos="sincos")
  kept = np.asarray(half.apply(params, x, rngs={"dropout": jax.random.key(3)})[0])
  idx = np.asarray([int(np.argmin(np.abs(full[0] - t).sum(-1))) for t in kept[0]])
  assert len(set(((idx // 8 + idx % 8) % 2).tolist())) == 1  # a checkerboard


def test_an_unknown_mode_is_one_clear_error():
  c = _cfg()
  c.model.modalities.image.patch_dropout_mode = "stripes"
  with pytest.raises(Exception, match="unknown model.modalities.image.patch_dropout_mode="):
    configure.resolve(c)
  c = tiny_config("dual_encoder", **{"model.modalities.text.patch_dropout_mode": "grid"})
  with pytest.raises(Exception, match="patch_dropout_mode"):
    configure.resolve(c)
