"""Ordering and masked region modelling through the model: the targets are the permutation /
mask that was applied, the heads see the shuffled / masked inputs, the losses match NumPy, and
impossible settings are one-line config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config_lib, configure, models, objectives, ordering
from mmjax.configs import default
from tests.helpers import apply, apply_overrides, init, tiny_config


def _video_config(**kw):
  c = tiny_config("hier_multi_to_one", **{"loss_weights.frame_order": 1.0,
                                          "loss_weights.mlm": 0.0, "loss_weights.mim": 0.0,
                                          "loss_weights.itm": 0.0})
  c.model.modalities = {
      "video": {"kind": "video", "tubelet": (2, 8, 8), "grid": (4, 2, 2),
                "input_shape": (8, 16, 16, 3)},
      "text": {"kind": "text", "vocab_size": 261, "max_len": 12}}
  c.data.task = "video_text"
  return apply_overrides(c, kw)


def _batch(seed=0, b=4):
  rng = np.random.RandomState(seed)
  text = rng.randint(5, 261, size=(b, 12)).astype(np.int32)
  text[:, 0], text[:, 9], text[:, 10:] = 1, 2, 0
  return {"video": rng.randn(b, 8, 16, 16, 3).astype(np.float32), "text": text}


def test_frame_order_targets_are_the_applied_permutation():
  cfg = configure.resolve(_video_config(**{"objectives.frame_order_ratio": 0.75}))
  model = models.build_model(cfg)
  batch = _batch()
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  rng = jax.random.key(4)
  out = apply(model, params, batch, rng, cfg.objectives, method=model.pretraining_outputs)
  logits, targets, weights = out["frame_order"]["video"]
  assert logits.shape == (4, 4, 4)  # 8 frames / tubelet 2 = 4 groups, 4 classes each
  # The same draw the model makes (fold_in 13, then group index 0).
  perm, moved = ordering.frame_permutation(jax.random.fold_in(jax.random.fold_in(rng, 13), 0),
                                           4, 4, 0.75)
  np.testing.assert_array_equal(targets, perm)
  np.testing.assert_array_equal(weights, moved.astype(np.float32))
  assert (np.asarray(weights).sum(1) == 3).all()  # round(0.75 * 4) groups shuffled per clip
  # The head read the shuffled clip, not the original one.
  shuffled = dict(batch, video=ordering.permute_frames(batch["video"], perm, 2))
  want = apply(model, params, apply(model, params, shuffled)["tokens"]["video"], "video",
                     method=lambda m, t, v: m.frame_order_logits(v, t))
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  loss, metrics = objectives.order_loss(logits, targets, weights)
  lg = np.asarray(logits, np.float64)
  ce = (np.log(np.exp(lg).sum(-1)) - np.take_along_axis(lg, np.asarray(perm)[..., None], -1)[..., 0])
  np.testing.assert_allclose(loss, (ce * weights).sum() / weights.sum(), rtol=1e-5)
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_sentence_order_shuffles_segments_and_predicts_them():
  cfg = configure.resolve(_video_config(**{"loss_weights.frame_order": 0.0,
                                          "loss_weights.sentence_order": 1.0,
                                          "model.order_segments": 2}))
  model = models.build_model(cfg)
  batch = _batch(1)
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  rng = jax.random.key(2)
  logits, targets, weights = apply(model, params, batch, rng, cfg.objectives,
                                         method=model.pretraining_outputs)["sentence_order"]["text"]
  assert logits.shape == (4, 12, 2)
  gather, tgt, w = ordering.segment_permutation(
      jax.random.fold_in(jax.random.fold_in(rng, 13), 50), jnp.asarray(batch["text"] != 0), 2)
  np.testing.assert_array_equal(targets, tgt)
  np.testing.assert_array_equal(weights, w)
  np.testing.assert_array_equal(np.asarray(weights).sum(1), [8] * 4)  # body: 10 valid - CLS, SEP


def test_ordering_needs_its_stream():
  c = tiny_config("hier_multi_to_one", **{"loss_weights.frame_order": 1.0})
  with pytest.raises(config_lib.ConfigError, match="frame_order needs a video modality"):
    configure.resolve(c)
  c = _video_config()
  c.model.modalities.video.tubelet = (8, 8, 8)
  with pytest.raises(config_lib.ConfigError, match="at least 2 tubelet groups"):
    configure.resolve(c)
  with pytest.raises(config_lib.ConfigError, match="frame_order_ratio=0.0 must be in"):
    configure.resolve(_video_config(**{"objectives.frame_order_ratio": 0.0}))


# ---------------------------------------------------------------------------- regions

def _region_model(**weights):
  c = default.get_config()
  c.model.fusion = "early_concat"
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 4, 64, 32
  c.model.depth.update({"unimodal": 1, "joint": 1})
  c.model.modalities = {
      "regions": {"kind": "regions", "feature_dim": 16, "region_classes": 5,
                  "input_shape": (10,)},
      "text": {"kind": "text", "vocab_size": 261, "max_len": 12}}
  c.loss_weights = {"contrastive": 0.0, "mlm": 0.0, "mim": 0.0, "itm": 0.0, **weights}
  del c["data"]
  cfg = configure.resolve_model(c)
  obj = config_lib.ObjectivesConfig(weights=tuple(weights.items()), mrm_ratio=0.4)
  objectives.check(cfg, obj)
  return models.MultimodalModel(cfg), obj


def _region_batch(b=4, n=10, seed=0):
  rng = np.random.RandomState(seed)
  mask = np.arange(n)[None] < np.array([10, 7, 4, 10])[:, None]
  logits = rng.randn(b, n, 5)
  dist = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  text = rng.randint(5, 261, size=(b, 12)).astype(np.int32)
  text[:, 0] = 1
  return {"regions": {"features": rng.randn(b, n, 16).astype(np.float32),
                      "boxes": rng.rand(b, n, 5).astype(np.float32), "mask": mask,
                      "label_dist": dist.astype(np.float32)}, "text": text}


def test_masked_region_modelling_targets_and_losses():
  model, obj = _region_model(mrc=1.0, mrfr=1.0)
  batch = _region_batch()
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  out = apply(model, params, batch, jax.random.key(1), obj, method=model.pretraining_outputs)
  logits, dist, w = out["mrc"]["regions"]
  pred, feats, w2 = out["mrfr"]["regions"]
  assert logits.shape == (4, 10, 5) and pred.shape == (4, 10, 16)
  np.testing.assert_array_equal(w, w2)
  np.testing.assert_array_equal(feats, batch["regions"]["features"])
  w = np.asarray(w)
  assert (w[~batch["regions"]["mask"]] == 0).all()  # padding regions are never targets
  assert w.sum() > 0
  # KL(detector || model) on masked regions, against NumPy.
  lg = np.asarray(logits, np.float64)
  logq = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  p = np.asarray(dist, np.float64)
  kl = (p * (np.log(p) - logq)).sum(-1)
  loss, metrics = objectives.mrc_loss(logits, dist, w)
  np.testing.assert_allclose(loss, (kl * w).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(objectives.mrc_loss(jnp.log(dist), dist, w)[0], 0.0, atol=1e-6)
  mse = ((np.asarray(pred) - batch["regions"]["features"]) ** 2).mean(-1)
  np.testing.assert_allclose(objectives.mrfr_loss(pred, feats, w)[0],
                             (mse * w).sum() / w.sum(), rtol=1e-5)
  # The heads read masked regions: a masked region's own features do not reach its output.
  other = {"regions": dict(batch["regions"]), "text": batch["text"]}
  f = np.array(batch["regions"]["features"])
  f[w > 0] += 5.0
  other["regions"]["features"] = f
  out2 = apply(model, params, other, jax.random.key(1), obj, method=model.pretraining_outputs)
  np.testing.assert_allclose(out2["mrc"]["regions"][0][w > 0], logits[w > 0], rtol=1e-4,
                             atol=1e-4)
  total, m = objectives.losses_from_outputs(out, obj)
  assert set(m) >= {"mrc/loss", "mrfr/loss", "mrc/accuracy"}


def test_region_objectives_need_regions():
  with pytest.raises(ValueError, match="mrc needs model.modalities.regions."
                     "region_classes"):
    m, _ = _region_model(mrfr=1.0)
    objectives.check(
        config_lib.dataclasses.replace(
            m.cfg, modalities=tuple(config_lib.dataclasses.replace(x, region_classes=0)
                                    for x in m.cfg.modalities)),
        config_lib.ObjectivesConfig(weights=(("mrc", 1.0),)))
  with pytest.raises(config_lib.ConfigError, match="masked region modelling.*needs a regions"):
    configure.resolve(tiny_config("hier_multi_to_one", **{"loss_weights.mrfr": 1.0}))


def test_frame_order_evaluator_counts_the_shuffled_groups_it_gets_right():
  from mmjax import sharding  # pylint: disable=import-outside-toplevel
  from mmjax.evaluators import ordering as ordering_eval  # pylint: disable=import-outside-toplevel
  from mmjax.evaluators.common import Evaluated  # pylint: disable=import-outside-toplevel
  cfg = configure.resolve(_video_config(**{"objectives.frame_order_ratio": 1.0}))
  model = models.build_model(cfg)
  batches = [_batch(0), _batch(1)]
  params = init(model, jax.random.key(0), batches[0], method=model.init_all)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  ev = Evaluated(cfg, model, params, mesh, sharding.batch_sharding(mesh))
  res = ordering_eval.evaluate(ev, batches, 1.0, seed=0)
  assert res["frame_order/shuffled_groups"] == 32 and res["frame_order/chance"] == 0.25
  hits = 0
  for i, b in enumerate(batches):  # the evaluator's keys: key(seed * 100_003 + i)
    logits, perm, moved = apply(model, params, b, jax.random.key(i), 1.0, "video",
                                      method=model.frame_order_predictions)
    hits += int(((np.argmax(logits, -1) == np.asarray(perm)) & np.asarray(moved)).sum())
  assert res["frame_order/accuracy"] == hits / 32
