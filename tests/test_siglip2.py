"""The SigLIP 2 recipe: region data of the built-in scenes, LocCa's three decoder tasks,
SILC / TIPS self-distillation from the EMA teacher, objectives.starts phases, and
configs/siglip2.py through train.py."""
import json
import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax
from mmjax import configure, models, objectives, sharding, train_lib, trainer
from mmjax.data import builtin
from mmjax.objectives import distillation, localization
from tests.helpers import apply_overrides, run_entry
from tests.test_train_loop import _one_device


def _tiny(**kw):
  """configs/siglip2.py at the smallest size that runs every objective."""
  c = mmjax.load_config("configs/siglip2.py")
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 4, 64, 32
  c.model.depth.unimodal, c.model.decoder_depth = 1, 1
  c.model.modalities.image.input_shape, c.model.modalities.image.grid = (16, 16, 3), (4, 4)
  c.model.loc_bins, c.model.prototypes = 16, 32
  c.data.image_size, c.data.train_examples, c.data.test_examples = 16, 256, 64
  c.batch_size, c.total_steps, c.mesh.data, c.log_every_steps = 8, 6, 1, 1
  c.objectives.starts = {"silc": 4, "tips": 4}
  c.checkpoint.every_steps = 100
  c.eval.every_steps = 0
  return apply_overrides(c, kw)


# ----------------------------------------------------------------------------- region data

def test_builtin_regions_box_every_pixel_of_their_object_and_caption_it():
  src = builtin.BuiltinSource("image_text", "test", size=20, image_size=32, regions=True,
                              include_caption=True, max_objects=3)
  for i in range(20):
    ex = src[i]
    sem = builtin.parse_caption("image_text", str(ex["caption"]))
    n = len(sem["objects"])
    assert ex["region_valid"].tolist() == [True] * n + [False] * (3 - n)
    for r, obj in enumerate(sem["objects"]):
      assert src.tokenizer.decode(ex["region_text"][r]) == f"a {obj[0]} {obj[1]}"
      label = 1 + builtin.label_of("image_text", {"objects": [obj]})
      ys, xs = np.nonzero(ex["pixel_labels"] == label)
      y0, x0, y1, x1 = ex["region_boxes"][r] * 32
      # every pixel painted with this object lies inside its box (pixel centres)
      assert ys.size and (ys + 0.5 >= y0).all() and (ys + 0.5 <= y1).all()
      assert (xs + 0.5 >= x0).all() and (xs + 0.5 <= x1).all()
      # and the box is tight: the painted extent covers most of it on both axes
      assert (ys.max() + 1 - ys.min()) >= 0.7 * (y1 - y0)
    assert not ex["region_text"][n:].any()


def test_regions_need_the_image_text_task():
  with pytest.raises(ValueError, match="data.regions=True needs data.task='image_text'"):
    builtin.BuiltinSource("video_text", "train", size=2, regions=True)


# ----------------------------------------------------------------------------- LocCa

def test_box_tokens_round_trip_within_half_a_bin_and_iou():
  boxes = jnp.asarray([[0.0, 0.1, 0.5, 0.999], [0.25, 0.25, 0.75, 0.75]])
  ids = localization.box_tokens(boxes, 10, 261)
  assert ids.tolist() == [[261, 262, 266, 270], [263, 263, 268, 268]]
  back = localization.token_boxes(ids, 10, 261)
  assert float(jnp.abs(back - boxes).max()) <= 0.05 + 1e-6
  iou = localization.box_iou(jnp.asarray([[0.0, 0.0, 0.5, 0.5]]),
                             jnp.asarray([[0.25, 0.0, 0.75, 0.5]]))
  np.testing.assert_allclose(iou, [1 / 3], rtol=1e-6)


def test_region_task_sequences_put_location_tokens_where_the_weights_are():
  text = jnp.asarray([[1, 10, 11, 2, 0, 0, 0, 0, 0, 0]])  # [CLS] a b [SEP]
  loc = jnp.asarray([[300, 301, 302, 303]])
  ref, ref_w = localization.referring_sequence(text, loc)
  assert ref.tolist() == [[1, 10, 11, 2, 300, 301, 302, 303, 0, 0]]
  # targets are ref[1:]: weight exactly where the target is a location token
  assert ref_w.tolist() == [[0, 0, 0, 1, 1, 1, 1, 0, 0]]
  gnd, gnd_w = localization.grounded_sequence(text, loc)
  assert gnd.tolist() == [[1, 300, 301, 302, 303, 10, 11, 2, 0, 0]]
  assert gnd_w.tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0]]


def _model_batch(cfg):
  model = models.build_model(cfg.model)
  src = builtin.source_from_config(cfg.data, "train")
  exs = [src[i] for i in range(cfg.batch_size)]
  keys = ("image", "text") + localization.REGION_KEYS
  return model, {k: np.stack([e[k] for e in exs]) for k in keys}


def test_locca_loss_is_the_weighted_mean_of_its_three_next_token_losses():
  cfg = configure.resolve(_tiny(**{"objectives.starts": {}, "objectives.locca_caption": 2.0,
                                   "objectives.locca_referring": 1.0,
                                   "objectives.locca_grounded": 0.5}))
  model, batch = _model_batch(cfg)
  params = mmjax.init_params(model, jax.random.key(0))
  _, metrics = objectives.pretraining_loss(model, params, batch, jax.random.key(1),
                                           cfg.objectives)
  m = {k: float(v) for k, v in metrics.items()}
  want = (2 * m["locca/caption_loss"] + m["locca/referring_loss"]
          + 0.5 * m["locca/grounded_loss"]) / 3.5
  np.testing.assert_allclose(m["locca/loss"], want, rtol=1e-5)
  # the referring rows' loss is a cross entropy over V + bins classes at 4 targets per row
  outs = model.apply(params, batch, jax.random.key(1), cfg.objectives,
                     method=model.pretraining_outputs)["locca"]
  logits, targets, weights = (np.asarray(x) for x in outs)
  # every output has the example axis first (gradient accumulation joins them per example)
  assert logits.shape[:2] == targets.shape[:2] == (cfg.batch_size, 3)
  assert logits.shape[-1] == 261 + cfg.model.loc_bins
  ref_w, ref_t = weights[:, 1], targets[:, 1]
  assert (ref_w.sum(axis=1) == 4).all() and (ref_t[ref_w > 0] >= 261).all()
  z = logits[:, 1] - logits[:, 1].max(-1, keepdims=True)
  ce = np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, ref_t[..., None], -1)[..., 0]
  np.testing.assert_allclose((ce * ref_w).sum() / ref_w.sum(), m["locca/referring_loss"],
                             rtol=1e-4)


# ----------------------------------------------------------------------------- SILC / TIPS

def _np_distill(student, teacher, w, ts, tt):
  c = (teacher * w[..., None]).reshape(-1, teacher.shape[-1]).sum(0) / w.sum()
  p = np.exp((teacher - c) / tt)
  p /= p.sum(-1, keepdims=True)
  s = student / ts
  q = s - s.max(-1, keepdims=True)
  q = q - np.log(np.exp(q).sum(-1, keepdims=True))
  return float(((-(p * q).sum(-1)) * w).sum() / w.sum())


def test_self_distillation_loss_matches_numpy_and_passes_no_gradient_to_the_teacher():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(4, 3, 7)), rng.normal(size=(4, 3, 7))
  w = (rng.random((4, 3)) > 0.3).astype(np.float32)
  loss, metrics = objectives.self_distillation_loss(jnp.asarray(s), jnp.asarray(t),
                                                    jnp.asarray(w), 0.1, 0.04)
  np.testing.assert_allclose(float(loss), _np_distill(s, t, w, 0.1, 0.04), rtol=1e-5)
  assert 0 <= float(metrics["agreement"]) <= 1
  g = jax.grad(lambda tt: objectives.self_distillation_loss(jnp.asarray(s), tt, jnp.asarray(w),
                                                             0.1, 0.04)[0])(jnp.asarray(t))
  assert not np.asarray(g).any()


def test_local_crops_are_resized_pieces_of_their_own_image():
  x = jnp.broadcast_to(jnp.arange(16.0)[None, :, None, None], (2, 16, 16, 1))  # value = row
  x = x + 100.0 * jnp.arange(2.0)[:, None, None, None]
  crops = distillation.local_crops(jax.random.key(0), x, 3, (0.1, 0.3))
  assert crops.shape == (6, 16, 16, 1)
  c = np.asarray(crops)[..., 0]
  for i in range(6):
    own = 100.0 * (i // 3)  # rows b * n + k: image-major
    assert (c[i] >= own - 1e-3).all() and (c[i] <= own + 15 + 1e-3).all()
    assert np.ptp(c[i][:, 0]) < 15 * 0.6  # a crop spans part of the rows, not all of them
    assert (np.diff(c[i][:, 0]) >= -1e-3).all()  # in order, not flipped


def test_teacher_in_the_batch_is_what_the_student_learns_from():
  """The distillation losses read the teacher's outputs from the batch when the step puts
  them there (the EMA parameters), and fall back to the student itself otherwise."""
  cfg = configure.resolve(_tiny(**{"objectives.starts": {}}))
  model, batch = _model_batch(cfg)
  params = mmjax.init_params(model, jax.random.key(0))
  other = mmjax.init_params(model, jax.random.key(5))
  loss = lambda b: {k: float(v) for k, v in objectives.pretraining_loss(
      model, params, b, jax.random.key(1), cfg.objectives)[1].items()}
  own = loss(batch)
  same = loss(train_lib.teacher_batch(model, params, batch, cfg.objectives))
  diff = loss(train_lib.teacher_batch(model, other, batch, cfg.objectives))
  for k in ("silc/loss", "tips/loss"):
    np.testing.assert_allclose(same[k], own[k], rtol=1e-5)
    assert abs(diff[k] - own[k]) > 1e-3
  np.testing.assert_allclose(diff["sigmoid/loss"], own["sigmoid/loss"], rtol=1e-6)


def test_config_errors_are_one_line():
  for kw, msg in (({"optimizer.ema_decay": 0.0}, "distils from an EMA teacher"),
                  ({"data.regions": False}, "loss_weights.locca trains on region boxes"),
                  ({"objectives.starts": {"silc": 6}}, "is not before total_steps=6"),
                  ({"objectives.starts": {"nope": 2}}, "names no loss weight"),
                  ({"objectives.silc_crop_scale": (0.5, 0.2)}, "silc_crop_scale")):
    with pytest.raises(configure.ConfigError, match=re.escape(msg)):
      configure.resolve(_tiny(**kw))


# over 60 s on slower machines: five short trainings (the run, two stops, two resumes)
def test_late_objectives_switch_on_at_their_step_and_resume_exactly(tmp_path, capsys):
  """silc / tips start at step 4 of 6: steps 1-4 train sigmoid + locca only (a first
  program), steps 5-6 all five; a run stopped at step 5 (after the switch) and one stopped at
  step 3 (before it) end on the uninterrupted run's parameters, bit for bit."""
  cfg = _tiny()
  full = _one_device(lambda: trainer.train(cfg, str(tmp_path / "a")))
  out = capsys.readouterr().out
  assert "from step 4: silc, tips on" in out, out[-2000:]
  rec = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl") if '"loss"' in x]
  assert [r["step"] for r in rec] == [1, 2, 3, 4, 5, 6]
  assert all("silc/loss" not in r for r in rec[:4])
  assert all("silc/loss" in r and "tips/loss" in r and "locca/loss" in r for r in rec[4:])
  for stop in (5, 3):
    wd = str(tmp_path / f"s{stop}")
    _one_device(lambda: trainer.train(cfg, wd, stop_after=stop, log_to_stdout=False))
    resumed = _one_device(lambda: trainer.train(cfg, wd, log_to_stdout=False))
    chex.assert_trees_all_equal(jax.device_get(resumed["state"].params),
                                jax.device_get(full["state"].params))


def test_siglip2_trains_from_the_command_line(tmp_path):
  cfg = tmp_path / "tiny_siglip2.py"
  cfg.write_text("from tests.test_siglip2 import _tiny\n\n\ndef get_config():\n"
                 "  return _tiny(**{'total_steps': 3, "
                 "'objectives.starts': {'silc': 2, 'tips': 2}})\n")
  p = run_entry(["train.py", f"--config={cfg}", f"--workdir={tmp_path / 'w'}"], timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  assert ("objectives  locca=1.0, sigmoid=1.0, silc=1.0, tips=0.25; silc from step 2; tips "
          "from step 2") in p.stdout, p.stdout
  assert "from step 2: silc, tips on" in p.stdout
  assert "Traceback" not in p.stderr
  # the region evaluators score the checkpoint through eval.py
  e = run_entry(["eval.py", f"--workdir={tmp_path / 'w'}",
                 "--evaluators=referring,grounded_caption,dense_probe",
                 "--config.eval.probe_train_examples=32", "--config.eval.num_examples=16"],
                timeout=300)
  assert e.returncode == 0 and "Traceback" not in e.stderr, e.stderr[-3000:]
  res = json.loads((tmp_path / "w" / "eval" / "results.json").read_text())
  for key in ("referring/accuracy", "referring/shuffled_accuracy", "grounded_caption/cider",
              "dense_probe/object_accuracy", "dense_probe/majority_object_accuracy"):
    assert 0.0 <= res[key] <= 10.0, (key, res)
  assert res["referring/regions"] == res["grounded_caption/regions"] > 16


def _steps(cfg, n_devices, steps=2):
  model = models.build_model(cfg.model)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh), jax.devices()[:n_devices])
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
  _, batch = _model_batch(cfg)
  out = []
  for _ in range(steps):
    state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    out.append({k: float(v) for k, v in metrics.items()})
  return out, jax.device_get(state.params)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_all_five_objectives_step_the_same_on_one_and_eight_devices():
  """sigmoid + locca + silc + tips (the EMA teacher in the step) over data 4 x fsdp 2 equal
  one device: every loss and the parameters after two steps."""
  cfg = configure.resolve(_tiny(**{"objectives.starts": {}}))
  ref, ref_params = _steps(cfg, 1)
  cfg8 = configure.resolve(_tiny(**{"objectives.starts": {}, "mesh.data": 4, "mesh.fsdp": 2}))
  got, params = _steps(cfg8, 8)
  for r, g in zip(ref, got):
    for k in ("loss", "sigmoid/loss", "locca/loss", "silc/loss", "tips/loss", "grad_norm"):
      np.testing.assert_allclose(g[k], r[k], rtol=2e-5, atol=2e-5, err_msg=k)
  chex.assert_trees_all_close(params, ref_params, atol=2e-5, rtol=2e-5)


def test_shipped_siglip2_configs_resolve_with_all_five_objectives_at_their_shapes():
  small = configure.resolve(mmjax.load_config("configs/siglip2.py"))
  b16 = configure.resolve(mmjax.load_config("configs/siglip2_b16.py"))
  for cfg in (small, b16):
    assert set(cfg.objectives.active) == {"sigmoid", "locca", "silc", "tips"}
    assert dict(cfg.objectives.starts) == {"silc": 0.8 * cfg.total_steps,
                                           "tips": 0.8 * cfg.total_steps}
    assert cfg.optimizer.ema_decay > 0 and cfg.data.regions
  m = b16.model
  assert (m.block.width, m.block.num_heads, m.block.mlp_dim) == (768, 12, 3072)
  assert configure.token_counts(m)["image"] == 256 and m.loc_bins == 500  # 16 x 16, no [CLS]
  shapes = jax.eval_shape(lambda: mmjax.init_params(models.build_model(m), jax.random.key(0)))
  tower = shapes["params"]["fusion"]
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tower)) / 1e6
  assert 160 < n < 180  # two 12-layer 768-wide towers (85M each)


def test_all_five_objectives_accumulate_exactly_where_nothing_is_drawn():
  """grad_accum_steps=2 ('batch': the whole batch's negatives) equals one step of the whole
  batch where nothing is drawn per micro-batch (no CapPa rows, one region per example): the
  sigmoid and LocCa losses; then the full recipe (crops and masks drawn per micro-batch, as
  MIM's are) trains under accumulation."""
  kw = {"objectives.starts": {}, "objectives.cappa_fraction": 0.0, "data.max_objects": 1,
        "loss_weights.silc": 0.0}
  ref, _ = _steps(configure.resolve(_tiny(**kw)), 1, steps=1)
  got, _ = _steps(configure.resolve(_tiny(**kw, grad_accum_steps=2)), 1, steps=1)
  for k in ("sigmoid/loss", "locca/loss"):
    np.testing.assert_allclose(got[0][k], ref[0][k], rtol=1e-5, err_msg=k)
  full, _ = _steps(configure.resolve(_tiny(**{"objectives.starts": {}, "grad_accum_steps": 2})),
                   1, steps=1)
  assert np.isfinite(full[0]["loss"]) and "silc/loss" in full[0]
