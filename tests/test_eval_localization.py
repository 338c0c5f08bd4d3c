"""The region evaluators of the SigLIP 2 recipe: referring (greedy location tokens -> IoU),
grounded_caption (greedy caption of a box) and dense_probe (per-patch probe of pixel_labels)."""
import jax
import jax.numpy as jnp
import numpy as np

import mmjax
from mmjax import configure
from mmjax.data import text as text_lib
from mmjax.evaluators import dense_probe
from mmjax.evaluators import localization as ev_loc
from mmjax.objectives import localization
from tests.test_siglip2 import _model_batch, _tiny


def _model():
  cfg = configure.resolve(_tiny(**{"objectives.starts": {}}))
  model, batch = _model_batch(cfg)
  return model, mmjax.init_params(model, jax.random.key(3)), batch


def _loc_logits(model, params, batch, ids):
  memory, mask = model.apply(params, batch, method=model.caption_memory)
  r = ids.shape[0] // memory.shape[0]
  return np.asarray(model.apply(params, jnp.asarray(ids), jnp.repeat(memory, r, 0),
                                jnp.repeat(mask, r, 0), method=ev_loc._locca_logits))


def test_referring_decodes_four_location_tokens_that_teacher_forcing_agrees_with():
  model, params, batch = _model()
  inputs = {"image": batch["image"]}
  text = batch["region_text"]
  pred = np.asarray(jax.jit(lambda p, b, t: ev_loc.refer(model, p, b, t))(
      params, inputs, jnp.asarray(text)))
  v, bins = ev_loc.text_vocab(model), model.cfg.loc_bins
  assert pred.shape == text.shape[:2] + (4,)
  assert ((pred >= v) & (pred < v + bins)).all()
  # the referring row with these tokens in place, read once with teacher forcing: at each
  # location slot the argmax over the location ids is the token greedy decoding put there
  flat = text.reshape(-1, text.shape[-1])
  seq, w = localization.referring_sequence(jnp.asarray(flat), jnp.asarray(pred.reshape(-1, 4)))
  logits = _loc_logits(model, params, inputs, np.asarray(seq))
  at = np.asarray(w) > 0  # [N, L-1]: positions whose next token is a location token
  want = v + logits[:, :-1][at][:, v:v + bins].argmax(-1)
  np.testing.assert_array_equal(want, np.asarray(seq)[:, 1:][at])


def test_grounded_caption_greedy_ids_are_text_and_follow_the_model_to_the_end_token():
  model, params, batch = _model()
  inputs = {"image": batch["image"]}
  v, length = ev_loc.text_vocab(model), batch["text"].shape[1]
  tok = text_lib.from_config(_tiny().data)
  cls, sep, pad = tok.cls_id, tok.sep_id, tok.pad_id
  ids = np.asarray(jax.jit(lambda p, b, x: ev_loc.ground(
      model, p, b, x, length=length, bos_id=cls, eos_id=sep, pad_id=pad))(
          params, inputs, jnp.asarray(batch["region_boxes"])))
  flat = ids.reshape(-1, length)
  boxes = batch["region_boxes"].reshape(-1, 4)
  np.testing.assert_array_equal(flat[:, 1:5], np.asarray(localization.box_tokens(
      jnp.asarray(boxes), model.cfg.loc_bins, v)))
  assert (flat[:, 0] == cls).all() and (flat[:, 5:] < v).all()
  logits = _loc_logits(model, params, inputs, flat)
  for row, lg in zip(flat, logits):
    for t in range(4, length - 1):
      if row[t] == sep and t > 4:
        assert (row[t + 1:] == pad).all()
        break
      assert row[t + 1] == lg[t, :v].argmax()


def test_box_scores_tell_the_named_object_from_the_other_one_and_from_the_prior():
  true = np.asarray([[0, 0, .5, .5], [.5, .5, 1, 1], [0, .5, .5, 1], [.5, 0, 1, .5]], np.float32)
  ex = np.asarray([0, 0, 1, 1])
  right = ev_loc.box_scores(true, true, ex, seed=0)
  assert right["referring/accuracy"] == 1.0 and abs(right["referring/mean_iou"] - 1) < 1e-6
  assert right["referring/other_region_accuracy"] == 0.0
  assert right["referring/shuffled_accuracy"] == 0.0  # the four boxes do not overlap
  swapped = ev_loc.box_scores(true[[1, 0, 3, 2]], true, ex, seed=0)  # the image's other object
  assert swapped["referring/accuracy"] == 0.0 and swapped["referring/other_region_accuracy"] == 1.0
  half = true.copy()
  half[0] = [0, 0, .5, .25]  # IoU 0.5 exactly is a hit, below is not
  s = ev_loc.box_scores(half, true, ex, seed=0)
  assert s["referring/accuracy"] == 1.0
  half[0] = [0, 0, .5, .24]
  assert ev_loc.box_scores(half, true, ex, seed=0)["referring/accuracy"] == 0.75


def test_caption_scores_and_their_baselines():
  refs = ["a red circle", "a blue square", "a green triangle", "a cyan circle"]
  ex = np.asarray([0, 0, 1, 2])
  s = ev_loc.caption_scores(list(refs), refs, ex, seed=0)
  assert s["grounded_caption/exact_match"] == 1.0 and s["grounded_caption/cider"] > 1.0
  assert s["grounded_caption/shuffled_exact_match"] == 0.0
  assert s["grounded_caption/other_region_exact_match"] == 0.0  # only image 0 has two
  swapped = ev_loc.caption_scores([refs[1], refs[0], refs[2], refs[3]], refs, ex, seed=0)
  assert swapped["grounded_caption/exact_match"] == 0.5
  assert swapped["grounded_caption/other_region_exact_match"] == 1.0


def test_patch_labels_are_each_patchs_majority_class():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, (3, 8, 12))
  got = dense_probe.patch_labels(labels, (2, 3))
  for b in range(3):
    for i in range(2):
      for j in range(3):
        counts = np.bincount(labels[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4].ravel(), minlength=4)
        assert got[b, 3 * i + j] == counts.argmax()  # ties: the lower class, as argmax


def test_dense_probe_reads_classes_from_features_and_reports_the_majority_baseline():
  rng = np.random.default_rng(1)
  y_tr = rng.choice(5, 600, p=[.6, .1, .1, .1, .1])
  y_te = rng.choice(5, 300, p=[.6, .1, .1, .1, .1])
  code = rng.normal(size=(5, 16))
  feats = lambda y: code[y] + 0.05 * rng.normal(size=(len(y), 16))
  out = dense_probe.evaluate(feats(y_tr), y_tr, feats(y_te), y_te, (1e-4,), 0.2, 0)
  assert out["dense_probe/accuracy"] == 1.0 and out["dense_probe/object_accuracy"] == 1.0
  assert out["dense_probe/majority_accuracy"] == np.mean(y_te == 0)
  top = np.bincount(y_tr[y_tr > 0]).argmax()
  assert out["dense_probe/majority_object_accuracy"] == np.mean(y_te[y_te > 0] == top)
  # features that say nothing of the class: the probe falls to about the majority
  noise = dense_probe.evaluate(rng.normal(size=(600, 16)), y_tr, rng.normal(size=(300, 16)),
                               y_te, (1e-1,), 0.2, 0)
  assert noise["dense_probe/object_accuracy"] < 0.5
