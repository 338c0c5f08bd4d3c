"""The minimal-pairs evaluator: each kind of negative is one controlled edit of the scene's
caption, and the accuracy counts, per kind, the scenes whose caption outscores it."""
import types
from collections import Counter

import numpy as np
import pytest

from mmjax.data import builtin
from mmjax.data import config as data_config
from mmjax.data import text as text_lib
from mmjax.evaluators import minimal_pairs as mp

THREE = {"objects": (("red", "circle"), ("blue", "square"), ("green", "triangle")),
         "relations": ("left of", "above")}


def _sem(caption):
  return builtin.parse_caption("image_text", caption)


@pytest.mark.parametrize("seed", range(5))
def test_each_kind_is_the_edit_it_names(seed):
  rng = np.random.default_rng(seed)
  objs, rels = THREE["objects"], THREE["relations"]
  swap = _sem(mp.negative("attribute_swap", THREE, rng))
  # the same colours and shapes, bound differently
  assert Counter(c for c, _ in swap["objects"]) == Counter(c for c, _ in objs)
  assert Counter(s for _, s in swap["objects"]) == Counter(s for _, s in objs)
  assert swap["objects"] != objs and swap["relations"] == rels
  flip = _sem(mp.negative("relation_flip", THREE, rng))
  assert flip["objects"] == objs
  assert sum(a != b for a, b in zip(flip["relations"], rels)) == 1
  assert all(b == builtin.FLIP[a] for a, b in zip(rels, flip["relations"]) if a != b)
  arg = _sem(mp.negative("argument_swap", THREE, rng))
  assert arg["objects"] == (objs[1], objs[0], objs[2]) and arg["relations"] == rels
  count = _sem(mp.negative("count", THREE, rng))
  assert count["objects"][:3] == objs and len(count["objects"]) == 4
  assert count["objects"][3][0] not in {c for c, _ in objs}
  words = builtin.caption("image_text", THREE).split()
  order = mp.negative("word_order", THREE, rng).split()
  assert sorted(order) == sorted(words) and order != words


def test_one_object_scenes_have_only_count_and_word_order():
  one = {"objects": (("red", "circle"),), "relations": ()}
  got = {k: mp.negative(k, one, np.random.default_rng(0)) for k in mp.KINDS}
  assert [k for k, v in got.items() if v is not None] == ["count", "word_order"]


def _patched_scores(monkeypatch, column_of_truth_wins: bool):
  def scores(ev, batch, texts, per, valid=None):
    n = len(texts) // per
    s = np.tile(np.arange(per, dtype=np.float64)[::-1], (n, 1))  # column 0 highest
    return s if column_of_truth_wins else -s
  monkeypatch.setattr(mp.itm, "pair_scores", scores)


@pytest.mark.parametrize("wins", [True, False])
def test_accuracy_counts_per_kind_and_skips_negatives_lost_to_truncation(monkeypatch, wins):
  cfg = data_config.get_config()
  cfg.update({"test_examples": 24, "text_len": 64})
  source = mp.captioned_source(cfg)
  tok = text_lib.from_config(cfg)
  batches = [{"index": np.arange(0, 12)}, {"index": np.arange(12, 24)}]
  _patched_scores(monkeypatch, wins)
  ev = types.SimpleNamespace(has_itm=False)
  out = mp.evaluate(ev, batches, source, tok, 64, seed=0)
  for k in mp.KINDS:
    assert out[f"minimal_pairs/{k}_accuracy"] == (1.0 if wins else 0.0)
  multi = sum(len(_sem(str(source[i]["caption"]))["objects"]) > 1 for i in range(24))
  assert out["minimal_pairs/attribute_swap_pairs"] == multi < 24
  assert out["minimal_pairs/word_order_pairs"] == 24
  # at text_len 16 the captions are cut before most edits: those pairs are not scored
  short = mp.evaluate(ev, batches, source, tok, 16, seed=0)
  assert short["minimal_pairs/count_pairs"] == 0
  assert short["minimal_pairs/word_order_pairs"] == 24
