"""The robustness evaluator: each corruption does what corruptions.py says, seeded per example
(any batching gives the same corrupted example); the evaluator scores exactly the corrupted
or absent split; an absent modality gives finite numbers in every fusion design; eval.py runs
it and reports a bad corruption name in one line."""
import json
import math

import jax
import numpy as np
import pytest

from mmjax import configure, fusion, models, sharding, train_lib, trainer
from mmjax.data import text as text_lib
from mmjax.evaluators import EvalContext, corruptions, get, itm, retrieval, robustness
from tests import tiny_config as tiny
from tests.helpers import apply_overrides, run_entry, tiny_config

DEV = jax.devices()[:1]
TOK = text_lib.get_tokenizer("bytes")


def _ctx(fusion_name="dual_encoder", **eval_keys):
  """A tiny model at init on the built-in set (64 test examples), as an evaluation context."""
  c = tiny_config(fusion_name)
  c.data.image_size, c.data.text_len, c.data.test_examples = 16, 12, 32
  c.eval.batch_size, c.eval.num_examples = 16, 32
  c.model.early_sum_align = "pad"
  apply_overrides(c, {f"eval.{k}": v for k, v in eval_keys.items()})
  cfg = configure.resolve(c)
  model = models.build_model(cfg.model)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, DEV)
  tx, _ = train_lib.make_optimizer(cfg)
  state, _ = train_lib.create_state(cfg, model, tx, mesh)
  return EvalContext(cfg, model, state.params, mesh, 0)


def _apply(fn, x, param, index=0, arg=None):
  return fn(x, param, corruptions.rng_for(0, "t", 1, index), arg)


def test_image_corruptions():
  rng = np.random.default_rng(0)
  img = rng.standard_normal((64, 64, 3)).astype(np.float32)
  noisy = _apply(corruptions.get("noise").apply, img, 0.5)
  assert noisy.dtype == img.dtype and abs(np.std(noisy - img) - 0.5) < 0.02
  blurred = _apply(corruptions.get("blur").apply, img, 0.05)
  assert np.std(blurred) < 0.5 * np.std(img)  # white noise loses most of its variance
  assert abs(blurred.mean() - img.mean()) < 0.05
  flat = np.full((32, 32, 3), 0.7, np.float32)
  np.testing.assert_allclose(_apply(corruptions.get("blur").apply, flat, 0.1), flat, rtol=1e-5)
  occ = _apply(corruptions.get("occlusion").apply, img + 10, 0.25)
  zero = np.all(occ == 0, axis=-1)
  assert zero.sum() == 32 * 32  # a 32 x 32 square: a quarter of the area
  rows, cols = np.nonzero(zero)
  assert rows.max() - rows.min() == 31 and cols.max() - cols.min() == 31
  np.testing.assert_array_equal(occ[~zero], img[~zero] + 10)


def test_frame_corruptions():
  video = np.arange(8, dtype=np.float32)[:, None, None, None] * np.ones((8, 2, 2, 3), np.float32)
  out = _apply(corruptions.get("frames").apply, video, 0.5, index=3)
  shown = out[:, 0, 0, 0]
  assert shown[0] == 0 and np.all(np.diff(shown) >= 0)  # each frame or a repeat of the last
  assert 0 < len(set(shown.tolist())) < 8
  spec = np.ones((20, 4), np.float32)
  out = _apply(corruptions.get("frames").apply, spec, 0.5)
  dropped = np.all(out == 0, axis=1)
  assert 0 < dropped.sum() < 20 and np.all(out[~dropped] == 1)
  regions = {"features": np.ones((10, 3), np.float32), "mask": np.ones(10, bool),
             "boxes": np.zeros((10, 5), np.float32)}
  out = _apply(corruptions.get("frames").apply, regions, 0.5)
  assert 0 < out["mask"].sum() < 10 and out["features"] is regions["features"]


def _words(fn, text, s, index=0):
  ids = TOK.encode(text, 96)
  return TOK.decode(_apply(fn, ids, s, index, (TOK, 96))).split()


def test_text_corruptions():
  text = "a small red cube left of a large blue sphere near two green cones"
  words = text.split()
  dropped = [_words(corruptions.get("drop").apply, text, 0.5, i) for i in range(20)]
  assert all(0 < len(d) < len(words) for d in dropped[:5])
  for d in dropped:  # a subsequence of the words, in order
    it = iter(words)
    assert all(w in it for w in d)
  shuffled = _words(corruptions.get("shuffle").apply, text, 1.0)
  assert sorted(shuffled) == sorted(words) and shuffled != words
  misspelt = _words(corruptions.get("misspell").apply, text, 0.5)
  changed = [(a, b) for a, b in zip(words, misspelt) if a != b]
  assert len(misspelt) == len(words) and 0 < len(changed) < len(words)
  for a, b in changed:  # one edit: swap, drop, double or replace one character
    assert abs(len(a) - len(b)) <= 1 and (len(a) != len(b) or sum(
        x != y for x, y in zip(a, b)) <= 2)


def test_each_example_is_corrupted_the_same_way_in_any_batching():
  rng = np.random.default_rng(1)
  batch = {"index": np.arange(8), "image": rng.standard_normal((8, 8, 8, 3)).astype(np.float32),
           "text": np.stack([TOK.encode(f"word{i} b c d e", 16) for i in range(8)]),
           "neg_text": np.stack([np.stack([TOK.encode(f"x{i} y z", 16)] * 2) for i in range(8)])}
  for m, name, arg in (("image", "occlusion", None), ("text", "misspell", (TOK, 16))):
    fn = robustness._corrupt(m, corruptions.get(name), 3, 0, arg)  # pylint: disable=protected-access
    whole = fn(batch)
    halves = [fn({k: v[i:i + 4] for k, v in batch.items()}) for i in (0, 4)]
    for k in robustness._fields(batch, m):  # pylint: disable=protected-access
      np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
      assert not np.array_equal(whole[k], batch[k])
  assert np.array_equal(whole["image"], batch["image"])  # one modality at a time


def test_the_evaluator_scores_exactly_the_corrupted_split():
  ctx = _ctx("cross_attention", robustness_metrics=("retrieval/a2b_R@10",
                                                    "itm/pairwise_accuracy"),
             robustness_corruptions=("noise",), robustness_severities=(3,))
  res = get("robustness").run(ctx)
  conds = {c for _, c, _ in robustness.conditions(ctx)}
  assert conds == {"image_absent", "image_noise3", "text_absent"}  # text has no 'noise'
  clean = ctx.test_batches()
  noise = robustness._corrupt("image", corruptions.get("noise"), 3, ctx.config.seed, None)  # pylint: disable=protected-access
  noisy = [noise(b) for b in clean]
  assert not np.array_equal(noisy[0]["image"], clean[0]["image"])
  absent = [{**b, "text_valid": np.zeros(len(b["index"]), bool)} for b in clean]
  expect = {"clean": retrieval.evaluate(ctx, clean)["retrieval/a2b_R@10"],
            "image_noise3": retrieval.evaluate(ctx, noisy)["retrieval/a2b_R@10"]}
  for cond, v in expect.items():
    assert res[f"robustness/{cond}/retrieval/a2b_R@10"] == v, cond
  itm_clean = itm.evaluate(ctx, clean)["itm/pairwise_accuracy"]
  itm_absent = itm.evaluate(ctx, absent)["itm/pairwise_accuracy"]
  assert res["robustness/clean/itm/pairwise_accuracy"] == itm_clean
  assert res["robustness/text_absent/itm/pairwise_accuracy"] == itm_absent
  assert res["robustness/drop/text_absent/itm/pairwise_accuracy"] == itm_clean - itm_absent
  assert itm_absent != itm_clean  # the ITM head saw the text as absent


# Every design at init, the image absent, blurred, and the text absent (compiles dominate).
@pytest.mark.parametrize("name", fusion.names())
def test_absent_modalities_give_finite_numbers(name):
  ctx = _ctx(name, robustness_metrics=("retrieval/a2b_R@10", "itm/pairwise_accuracy"),
             robustness_corruptions=("blur",), robustness_severities=(1,))
  res = get("robustness").run(ctx)
  for m in ("image", "text"):
    got = {k: v for k, v in res.items() if k.startswith(f"robustness/{m}_absent/")}
    assert got and all(math.isfinite(v) for v in got.values()), (m, got)
  assert all(math.isfinite(v) for v in res.values())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny dual encoder, 30 contrastive steps on the built-in image-text set."""
  d = str(tmp_path_factory.mktemp("run"))
  trainer.train(tiny.dual_encoder_30_steps(), d, log_to_stdout=False, devices=DEV)
  return d


def test_eval_py_runs_it_and_names_a_bad_corruption(workdir, tmp_path):
  r = run_entry(["eval.py", f"--workdir={workdir}", f"--out={tmp_path}",
                 "--evaluators=robustness", "--config.eval.robustness_severities=3",
                 "--config.eval.robustness_corruptions=occlusion,shuffle"])
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))
  clean = res["robustness/clean/zero_shot/accuracy"]
  assert clean > 1.5 / 18, res  # trained: above chance
  assert res["robustness/image_absent/zero_shot/accuracy"] < clean
  for cond in ("image_absent", "image_occlusion3", "text_absent", "text_shuffle3"):
    assert f"robustness/drop/{cond}/retrieval/b2a_R@10" in res and cond in r.stdout
  assert "robustness/text_shuffle3/zero_shot/accuracy" in res
  bad = run_entry(["eval.py", f"--workdir={workdir}", "--evaluators=robustness",
                   "--config.eval.robustness_corruptions=noize"])
  assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
  line = bad.stderr.strip().splitlines()[-1]
  assert line.startswith("error: ") and "unknown eval.robustness_corruptions='noize' (did you mean noise?)" in line, line
