"""Caption matching against minimally different negatives, per kind of difference: what joint
attention is for (binding, relations, counting, order), where a model that reads captions as a
bag of words cannot win.

For each test scene of the built-in image_text task (its full caption regenerated from the
split, then tokenized as training tokenizes it) and each kind k, one negative n_k is built
from the scene's semantics (seeded by config.seed and the example's index):

  attribute_swap  two objects exchange their colours (or, where the colours agree, shapes):
                  "a red circle left of a blue square" -> "a blue circle left of a red square"
  relation_flip   one relation replaced by its opposite ("left of" -> "right of")
  argument_swap   the subject and the first related object exchange places, the relation
                  kept: "a red circle left of a blue square" -> "a blue square left of a red
                  circle"
  count           one object too many: a clause naming an object that is not there
  word_order      the caption's own words in another order (the same bag of words)

The model scores the image with the caption and with n_k: the ITM head's log P(match) where
the design has a joint output, else the alignment cosine similarity (a dual encoder).
accuracy[k] = mean over the scenes where n_k exists and differs from the caption after
tokenization of [score(caption) > score(n_k)] (scores at 1e-4 resolution, ties are misses;
chance 0.5). Scenes with one object have no attribute_swap, relation_flip or argument_swap.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from mmjax.data import builtin
from mmjax.data import text as text_lib
from mmjax.evaluators import base, itm

KINDS = ("attribute_swap", "relation_flip", "argument_swap", "count", "word_order")
DIRECTIONS = ("left of", "right of", "above", "below")


def negative(kind: str, sem, rng: np.random.Generator) -> Optional[str]:
  """The kind's negative caption of image_text semantics `sem`, or None where it has none."""
  objs, rels = [tuple(o) for o in sem["objects"]], list(sem["relations"])
  cap = lambda o, r: builtin.caption("image_text", {"objects": tuple(o), "relations": tuple(r)})
  if kind == "attribute_swap":
    pairs = [(i, j, a) for i in range(len(objs)) for j in range(i + 1, len(objs))
             for a in (0, 1) if objs[i][a] != objs[j][a]]
    if not pairs:
      return None
    i, j, a = pairs[int(rng.integers(len(pairs)))]
    o = [list(x) for x in objs]
    o[i][a], o[j][a] = objs[j][a], objs[i][a]
    return cap(map(tuple, o), rels)
  if kind == "relation_flip":
    if not rels:
      return None
    j = int(rng.integers(len(rels)))
    return cap(objs, rels[:j] + [builtin.FLIP[rels[j]]] + rels[j + 1:])
  if kind == "argument_swap":
    if not rels or objs[0] == objs[1]:
      return None
    return cap([objs[1], objs[0]] + objs[2:], rels)
  if kind == "count":
    free_dirs = [d for d in DIRECTIONS if d not in rels]
    used = {c for c, _ in objs}
    colours = [c for c in builtin.COLOURS if c not in used]
    if not free_dirs or not colours:
      return None
    extra = (colours[int(rng.integers(len(colours)))],
             builtin.SHAPES[int(rng.integers(len(builtin.SHAPES)))])
    return cap(objs + [extra], rels + [free_dirs[int(rng.integers(len(free_dirs)))]])
  if kind == "word_order":
    words = cap(objs, rels).split()
    if len(set(words)) < 2:
      return None
    for _ in range(20):
      order = rng.permutation(len(words))
      shuffled = " ".join(words[i] for i in order)
      if shuffled != " ".join(words):
        return shuffled
    return None
  raise ValueError(f"unknown minimal-pair kind {kind!r}; use one of {', '.join(KINDS)}")


def scene_negatives(source, index: int, seed: int) -> Dict[str, Optional[str]]:
  """{'caption': the scene's full caption, kind: its negative or None} of test example index."""
  caption = str(source[int(index)]["caption"])
  sem = builtin.parse_caption("image_text", caption)
  rng = np.random.default_rng([int(seed), int(index), 7])
  return {"caption": caption, **{k: negative(k, sem, rng) for k in KINDS}}


def evaluate(ev, batches, source, tokenizer, text_len: int, seed: int) -> Dict[str, object]:
  """minimal_pairs/<kind>_accuracy and <kind>_pairs, the mean over kinds, and the method."""
  wins: Dict[str, List[bool]] = {k: [] for k in KINDS}
  for batch in batches:
    rows = [scene_negatives(source, i, seed) for i in batch["index"]]
    caps = [[r["caption"]] + [r[k] or r["caption"] for k in KINDS] for r in rows]
    ids = text_lib.encode_batch(tokenizer, [c for cs in caps for c in cs], text_len)
    ids = ids.reshape(len(rows), len(KINDS) + 1, -1)
    scores = itm.pair_scores(ev, batch, ids.reshape(-1, ids.shape[-1]), len(KINDS) + 1)
    for i, r in enumerate(rows):
      for j, k in enumerate(KINDS, start=1):
        if r[k] is not None and not np.array_equal(ids[i, 0], ids[i, j]):
          wins[k].append(bool(scores[i, 0] > scores[i, j]))
  out: Dict[str, object] = {}
  for k in KINDS:
    out[f"minimal_pairs/{k}_accuracy"] = float(np.mean(wins[k])) if wins[k] else float("nan")
    out[f"minimal_pairs/{k}_pairs"] = len(wins[k])
  scored = [out[f"minimal_pairs/{k}_accuracy"] for k in KINDS if wins[k]]
  out["minimal_pairs/mean_accuracy"] = float(np.mean(scored)) if scored else float("nan")
  out["minimal_pairs/chance"] = 0.5
  out["minimal_pairs/method"] = "ITM head" if ev.has_itm else "embedding similarity"
  return out


def captioned_source(data):
  """The built-in test split of data config `data`, with its raw captions."""
  data = data.copy_and_resolve_references()
  with data.unlocked():
    data.include_caption = True
  return builtin.source_from_config(data, "test")


@base.register
class MinimalPairs(base.Evaluator):
  """Accuracy against minimally different captions, per kind of difference (module doc)."""
  name = "minimal_pairs"

  def applies(self, ctx):
    d = ctx.config.data
    if d.source != "builtin" or d.task != "image_text":
      return "needs the built-in image_text scenes (captions with objects and relations)"
    if not ctx.text_second:
      return f"needs a text modality second; the model pairs {ctx.a}/{ctx.b}"
    return None

  def run(self, ctx):
    config = ctx.config
    source = ctx.cached("minimal_pairs/source", lambda: captioned_source(config.data))
    tok = ctx.cached("minimal_pairs/tokenizer", lambda: text_lib.from_config(config.data))
    return evaluate(ctx, ctx.test_batches(), source, tok, config.data.text_len, config.seed)
