"""Several captions per example (data.max_captions): tokenized rows, one caption sampled per
example per epoch in training (deterministic, resumable, the same on any process count), and
retrieval by the COCO / Flickr30k protocol (checked against hand-worked recalls)."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import checkpoint as ckpt_lib
from mmjax import configure, evaluate, models, train_lib
from mmjax.data import decode, pipeline
from mmjax.data import text as text_lib
from mmjax.evaluators import retrieval
from mmjax.evaluators.common import Evaluated
from mmjax import sharding
from tests import tiny_config as tiny
from tests.helpers import apply_overrides

TOK = text_lib.ByteTokenizer()
DEV = jax.devices()[:1]


# ----------------------------------------------------------------------------- the metric

def test_recall_multi_hand_checked():
  # 3 images x 2 captions; caption m belongs to image m // 2
  sim = np.array([[0.9, 0.1, 0.5, 0.2, 0.3, 0.0],
                  [0.8, 0.1, 0.2, 0.7, 0.6, 0.9],
                  [0.4, 0.4, 0.4, 0.1, 0.4, 0.2]])
  owner = np.array([0, 0, 1, 1, 2, 2])
  r = retrieval.recall_at_k_multi(sim, owner, ks=(1, 2, 3))
  # image -> text: best own caption 0.9 / 0.7 / 0.4; other images' captions at least as high:
  # none / {0.8, 0.9} / {0.4, 0.4, 0.4} (ties count against) -> ranks 0, 2, 3
  assert (r["a2b_R@1"], r["a2b_R@2"], r["a2b_R@3"]) == (1 / 3, 1 / 3, 2 / 3)
  # text -> image, per caption (column), other images at least as high as the true one:
  # c0: none; c1 (0.1): 0.1 tie, 0.4; c2 (0.2): 0.5, 0.4; c3: none; c4 (0.4): 0.6; c5 (0.2): 0.9
  # -> ranks 0, 2, 2, 0, 1, 1
  assert (r["b2a_R@1"], r["b2a_R@2"], r["b2a_R@3"]) == (2 / 6, 4 / 6, 6 / 6)


def test_recall_multi_with_one_caption_each_is_the_single_caption_metric():
  rng = np.random.default_rng(0)
  for n in (1, 5, 12):
    sim = np.round(rng.normal(size=(n, n)), 1)  # coarse: many ties
    assert retrieval.recall_at_k_multi(sim, np.arange(n)) == retrieval.recall_at_k(sim)
  # every score tied: each image ranks after the 6 other captions, each caption after the
  # 3 other images (a collapsed model is at the bottom, not the top)
  collapsed = np.zeros((4, 8))
  r = retrieval.recall_at_k_multi(collapsed, np.repeat(np.arange(4), 2), ks=(1, 3, 4, 7))
  assert r == {"a2b_R@1": 0.0, "a2b_R@3": 0.0, "a2b_R@4": 0.0, "a2b_R@7": 1.0,
               "b2a_R@1": 0.0, "b2a_R@3": 0.0, "b2a_R@4": 1.0, "b2a_R@7": 1.0}
  with pytest.raises(ValueError, match="has no caption"):
    retrieval.recall_at_k_multi(np.zeros((3, 2)), np.array([0, 2]))


class _FakeEv:
  """numpy stand-in for Evaluated on 2 devices: image rows are embeddings, a caption's
  embedding is VEC[its first byte - 'a']; ITM score = <image, caption embedding>."""

  a, b = "image", "text"

  class mesh:  # pylint: disable=invalid-name
    size = 2

  def __init__(self, has_towers):
    self.has_towers, self.calls = has_towers, []

  @staticmethod
  def caption_vec(ids):
    return VEC[np.clip(np.asarray(ids)[:, 1] - 5 - ord("a"), 0, len(VEC) - 1)]

  def encode(self, batch):
    (m, x), = batch.items()
    assert len(x) % self.mesh.size == 0, "rows must divide over the devices"
    self.calls.append((m, len(x)))
    return {m: np.asarray(x)}

  def embeddings(self, enc):
    return {m: (v if m == "image" else self.caption_vec(v)) for m, v in enc.items()}

  def itm_scores(self, pair):
    return np.sum(np.asarray(pair["image"]) * self.caption_vec(pair["text"]), axis=1)


VEC = np.random.default_rng(1).normal(size=(8, 3))


@pytest.mark.parametrize("towers", [True, False])
def test_multi_caption_retrieval_plumbing(towers):
  """4 images with 3, 1, 2, 3 captions (9 valid): the evaluator's R@k equal the ones computed
  here caption by caption from the same vectors."""
  counts = [3, 1, 2, 3]
  letters = ["abc", "d", "ef", "gha"]  # caption text -> its vector VEC[letter]
  img = np.random.default_rng(2).normal(size=(4, 3))
  texts = np.zeros((4, 3, 6), np.int32)
  for i, word in enumerate(letters):
    for j, ch in enumerate(word):
      texts[i, j] = TOK.encode(ch, 6)
  batches = [{"image": img[:2], "texts": texts[:2], "num_captions": np.int32(counts[:2])},
             {"image": img[2:], "texts": texts[2:], "num_captions": np.int32(counts[2:])}]
  ev = _FakeEv(towers)
  res = retrieval.evaluate(ev, batches)
  caps = [(i, VEC[ord(ch) - ord("a")]) for i, w in enumerate(letters) for ch in w]
  hits = {f"a2b_R@{k}": 0 for k in (1, 5, 10)} | {f"b2a_R@{k}": 0 for k in (1, 5, 10)}
  for i in range(4):
    best = max(img[i] @ v for o, v in caps if o == i)
    rank = sum(img[i] @ v >= best for o, v in caps if o != i)
    for k in (1, 5, 10):
      hits[f"a2b_R@{k}"] += rank < k
  for o, v in caps:
    rank = sum(img[i] @ v >= img[o] @ v for i in range(4) if i != o)
    for k in (1, 5, 10):
      hits[f"b2a_R@{k}"] += rank < k
  for key, h in hits.items():
    want = h / (4 if key.startswith("a2b") else 9)
    assert res[f"retrieval/{key}"] == pytest.approx(want), (key, res)
  assert res["retrieval/examples"] == 4 and res["retrieval/captions"] == 9
  assert res["retrieval/method"] == ("embedding similarity" if towers else "ITM head")
  assert res["retrieval/a2b_R@1"] < 1 or res["retrieval/b2a_R@1"] < 1  # not trivially perfect


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  """6 images (16x16 solid colours) with 3, 1, 2, 3, 2, 4 captions 'i-j'."""
  d = tmp_path_factory.mktemp("mc")
  (d / "img").mkdir()
  rows, rng = [], np.random.default_rng(0)
  for i, n in enumerate([3, 1, 2, 3, 2, 4]):
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "img" / f"{i}.png")
    rows.append({"image": f"img/{i}.png", "caption": [f"{i}-{j}" for j in range(n)]})
  (d / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return d


def _cfg(manifest, **kw):
  return {"source": "jsonl", "jsonl_path": str(manifest / "m.jsonl"), "image_size": 8,
          "text_len": 8, **kw}


def test_preprocessor_keeps_up_to_c_captions(manifest):
  one = list(pipeline.make_dataset(_cfg(manifest), "test", global_batch_size=6, seed=0,
                                   shuffle=False, repeat=False))[0]
  assert "texts" not in one and [TOK.decode(t) for t in one["text"]] == [
      f"{i}-0" for i in range(6)]  # max_captions=1: the first, as before
  b = list(pipeline.make_dataset(_cfg(manifest, max_captions=3), "test", global_batch_size=6,
                                 seed=0, shuffle=False, repeat=False))[0]
  assert b["texts"].shape == (6, 3, 8) and b["texts"].dtype == np.int32
  assert b["num_captions"].tolist() == [3, 1, 2, 3, 2, 3]  # 4 captions cut to 3
  for i, n in enumerate(b["num_captions"]):
    assert [TOK.decode(t) for t in b["texts"][i, :n]] == [f"{i}-{j}" for j in range(n)]
    assert (b["texts"][i, n:] == TOK.pad_id).all()  # padding rows: all PAD
  np.testing.assert_array_equal(b["text"], b["texts"][:, 0])
  pre = decode.Preprocessor(pipeline.config_lib.resolve(_cfg(manifest, max_captions=2)))
  for value, want in (("solo", ["solo"]), ([], [""]), (np.array([b"x", b"y", b"z"]), ["x", "y"])):
    ex = pre(0, {"text": value})
    assert int(ex["num_captions"]) == len(want)
    assert [TOK.decode(t) for t in ex["texts"][:len(want)]] == want
  with pytest.raises(ValueError, match="data.max_captions=0"):
    pipeline.config_lib.resolve(_cfg(manifest, max_captions=0))
  with pytest.raises(ValueError, match="built-in set has one caption"):
    pipeline.config_lib.resolve({"max_captions": 2})


def _drawn(batch):
  """(example index, caption j) per row; checks the caption belongs to its example."""
  out = []
  for idx, t in zip(batch["index"].tolist(), batch["text"]):
    i, j = map(int, TOK.decode(t).split("-"))
    assert i == idx % 6  # a repeated stream's index counts on over epochs
    out.append((i, j))
  return out


def test_training_samples_one_caption_per_example_per_epoch(manifest):
  cfg = _cfg(manifest, max_captions=4)
  it = iter(pipeline.make_dataset(cfg, "train", global_batch_size=3, seed=5))
  batches = [next(it) for _ in range(40)]  # 20 epochs of 6 examples
  assert all(set(b) == {"image", "text", "index"} for b in batches)  # the model's usual batch
  draws = [d for b in batches for d in _drawn(b)]
  per = {i: [j for k, j in draws if k == i] for i in range(6)}
  counts = [3, 1, 2, 3, 2, 4]
  for i, n in enumerate(counts):
    assert len(per[i]) == 20 and set(per[i]) == set(range(n)), (i, per[i])  # all, uniform-ish
  # deterministic: a fresh pipeline draws the same; another seed draws differently
  again = iter(pipeline.make_dataset(cfg, "train", global_batch_size=3, seed=5))
  assert [_drawn(next(again)) for _ in range(40)] == [_drawn(b) for b in batches]
  other = iter(pipeline.make_dataset(cfg, "train", global_batch_size=3, seed=6))
  assert sorted(d for _ in range(40) for d in _drawn(next(other))) != sorted(draws)
  # resume from a saved state: the same next batches
  it = iter(pipeline.make_dataset(cfg, "train", global_batch_size=3, seed=5))
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = iter(pipeline.make_dataset(cfg, "train", global_batch_size=3, seed=5))
  resumed.set_state(state)
  assert [_drawn(next(resumed)) for _ in range(5)] == [_drawn(b) for b in batches[7:12]]
  # two processes: their blocks, concatenated, are the one-process global batch
  per_proc = [iter(pipeline.make_dataset(cfg, "train", global_batch_size=4, seed=5,
                                         process_index=p, process_count=2)) for p in range(2)]
  single = iter(pipeline.make_dataset(cfg, "train", global_batch_size=4, seed=5))
  for _ in range(6):
    parts = [next(p) for p in per_proc]
    want = next(single)
    for k in want:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k])
  # evaluation (no shuffle) keeps every caption
  ev = next(iter(pipeline.make_dataset(cfg, "train", global_batch_size=3, seed=5,
                                       shuffle=False)))
  assert ev["texts"].shape == (3, 4, 8) and "num_captions" in ev


# ----------------------------------------------------------------------------- end to end

def init_checkpoint(workdir: str, **overrides) -> str:
  """A tiny dual encoder's initial state saved as step 0 of `workdir` (no train step to
  compile; the metrics are checked against its own embeddings)."""
  c = tiny.get_config()
  apply_overrides(c, {"model.fusion": "dual_encoder", "loss_weights.itm": 0.0,
                      "loss_weights.mlm": 0.0, "loss_weights.mim": 0.0, "mesh.data": 1,
                      **overrides})
  cfg = configure.resolve(c)
  model = models.build_model(cfg.model)
  tx, _ = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh), DEV)
  state = train_lib.create_state(cfg, model, tx, mesh)[0]
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=1, async_save=False)
  ckpt.save(0, state, config=c)
  ckpt.close()
  return workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return init_checkpoint(str(tmp_path_factory.mktemp("run")))


def test_evaluate_retrieval_on_jsonl_caption_lists(workdir, manifest):
  over = {"data.source": "jsonl", "data.jsonl_path": str(manifest / "m.jsonl"),
          "data.max_captions": "4", "eval.batch_size": "4", "eval.num_examples": "6"}
  res = evaluate.run(workdir, evaluators=["retrieval"], overrides=over, devices=DEV)
  assert res["retrieval/examples"] == 6 and res["retrieval/captions"] == 15, res
  # the same recalls from the model's embeddings of every image and every caption
  config, model, params, mesh, _ = evaluate.restore(workdir, overrides=over, devices=DEV)
  ev = Evaluated(config, model, params, mesh, sharding.batch_sharding(mesh))
  pre = decode.Preprocessor(config.data)
  rows = [json.loads(ln) for ln in (manifest / "m.jsonl").read_text().splitlines()]
  images = np.stack([pre(0, {"image": str(manifest / r["image"])})["image"] for r in rows])
  za = ev.embeddings(ev.encode({"image": images}))["image"]
  owner = [i for i, r in enumerate(rows) for _ in r["caption"]]
  ids = np.stack([TOK.encode(c, 12) for r in rows for c in r["caption"]])
  caps = list(zip(owner, ev.embeddings(ev.encode({"text": ids}))["text"]))
  q = lambda x: np.round(x / 1e-4)  # the evaluator's 1e-4 resolution
  for k in (1, 5):
    a2b = np.mean([sum(q(za[i] @ v) >= max(q(za[i] @ w) for o, w in caps if o == i)
                       for o, v in caps if o != i) < k for i in range(6)])
    b2a = np.mean([sum(q(za[i] @ v) >= q(za[o] @ v) for i in range(6) if i != o) < k
                   for o, v in caps])
    assert res[f"retrieval/a2b_R@{k}"] == pytest.approx(a2b), (k, res)
    assert res[f"retrieval/b2a_R@{k}"] == pytest.approx(b2a), (k, res)
  assert 0 < res["retrieval/a2b_R@5"] < 1 or 0 < res["retrieval/b2a_R@5"] < 1  # not trivial
