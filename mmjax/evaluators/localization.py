"""What LocCa's region tasks promise, on the test split's regions (data.regions): every valid
region of every test example is one query, read by the LocCa decoder
(mmjax.objectives.localization) on the image's un-pooled tokens.

  referring         [CLS] region caption [SEP] -> 4 location tokens, greedy, each restricted
                    to the location ids [V, V + bins); the box is each bin's centre.
                    accuracy = mean(IoU(predicted, true) >= 0.5), mean_iou.
  grounded_caption  [CLS] l1..l4 (the true box) -> the region's caption, greedy over the text
                    ids until [SEP]; exact match, CIDEr-D and BLEU-4 against the region's own
                    caption (mmjax.evaluators.caption_metrics).

Beside each score, two baselines from the same predictions:
  shuffled_*      scored against another region's truth (a derangement over all queries):
                  what a model that ignores its query scores on this set's box or caption
                  distribution;
  other_region_*  scored against another region of the same image (queries whose image has
                  one): a model that finds an object but not the one asked for scores this.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import text as text_lib
from mmjax.evaluators import base, caption_metrics
from mmjax.evaluators.captioning import derangement
from mmjax.objectives import localization as loc_lib
from mmjax.restore import to_host

IOU_HIT = 0.5


def _locca_logits(module, ids, memory, mask):
  """model.apply method: the LocCa decoder's logits [N, n, V + bins] on ids [N, n]."""
  return loc_lib.decoder_logits(module, ids, memory, mask)


def text_vocab(model) -> int:
  """V: the text vocabulary; location ids are V .. V + model.loc_bins - 1."""
  return int(model.cfg.modality(model.cfg.caption_text).option("vocab_size"))


def _memory(model, params, batch, regions: int):
  """The caption source's tokens and mask, each repeated per region slot: [B R, Nm, ...]."""
  memory, mask = model.apply(params, batch, method=model.caption_memory)
  return jnp.repeat(memory, regions, 0), jnp.repeat(mask, regions, 0)


def refer(model, params, batch, text):
  """Region captions text [B, R, L] -> predicted location ids [B, R, 4] (module docstring)."""
  b, r, length = text.shape
  vocab = text_vocab(model)
  bins = model.cfg.loc_bins
  memory, mask = _memory(model, params, batch, r)
  ids = text.reshape(b * r, length).astype(jnp.int32)
  n = jnp.sum(ids != 0, axis=1)
  rows = jnp.arange(b * r)
  for k in range(4):  # l_k at position n + k, predicted from position n + k - 1
    logits = model.apply(params, ids, memory, mask, method=_locca_logits)
    at = jnp.clip(n + k - 1, 0, length - 1)
    logp = logits[rows, at, vocab:vocab + bins]
    ids = ids.at[rows, jnp.clip(n + k, 0, length - 1)].set(
        vocab + jnp.argmax(logp, axis=-1).astype(jnp.int32))
  out = jnp.stack([ids[rows, jnp.clip(n + k, 0, length - 1)] for k in range(4)], axis=1)
  return out.reshape(b, r, 4)


def ground(model, params, batch, boxes, *, length: int, bos_id: int, eos_id: int,
           pad_id: int):
  """Boxes [B, R, 4] -> [B, R, length] ids: [CLS] l1..l4 then the greedy caption (text ids
  only; padding after [SEP])."""
  b, r, _ = boxes.shape
  vocab = text_vocab(model)
  memory, mask = _memory(model, params, batch, r)
  loc = loc_lib.box_tokens(boxes.reshape(b * r, 4), model.cfg.loc_bins, vocab)
  ids = jnp.full((b * r, length), pad_id, jnp.int32).at[:, 0].set(bos_id)
  ids = ids.at[:, 1:5].set(loc)

  def body(t, carry):
    ids, done = carry
    logits = model.apply(params, ids, memory, mask, method=_locca_logits)
    nxt = jnp.argmax(jnp.take(logits, t, axis=1)[:, :vocab], axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, pad_id, nxt)
    return ids.at[:, t + 1].set(nxt), done | (nxt == eos_id)
  ids, _ = jax.lax.fori_loop(4, length - 1, body, (ids, jnp.zeros((b * r,), bool)))
  return ids.reshape(b, r, length)


def queries(batches) -> Tuple[np.ndarray, np.ndarray]:
  """(example index, region slot) [M] of every valid region, in batch order."""
  ex, slot = [], []
  start = 0
  for batch in batches:
    e, s = np.nonzero(np.asarray(batch["region_valid"]))
    ex.append(e + start)
    slot.append(s)
    start += len(batch["region_valid"])
  return np.concatenate(ex), np.concatenate(slot)


def others(ex: np.ndarray) -> List[List[int]]:
  """For each query, the other queries of the same image."""
  groups: Dict[int, List[int]] = {}
  for i, e in enumerate(ex):
    groups.setdefault(int(e), []).append(i)
  return [[j for j in groups[int(e)] if j != i] for i, e in enumerate(ex)]


def box_scores(pred: np.ndarray, true: np.ndarray, ex: np.ndarray, seed: int) -> Dict[str, Any]:
  """pred, true [M, 4] boxes of M queries of images ex [M] -> the referring metrics."""
  iou = lambda a, b: np.asarray(loc_lib.box_iou(jnp.asarray(a), jnp.asarray(b)))
  hit = iou(pred, true) >= IOU_HIT
  out = {"referring/accuracy": float(hit.mean()), "referring/mean_iou": float(iou(pred, true).mean()),
         "referring/regions": int(len(pred))}
  if len(pred) > 1:
    perm = derangement(len(pred), seed)
    out["referring/shuffled_accuracy"] = float((iou(pred, true[perm]) >= IOU_HIT).mean())
  rest = others(ex)
  has = [i for i, o in enumerate(rest) if o]
  if has:
    out["referring/other_region_accuracy"] = float(np.mean(
        [np.any(iou(pred[[i] * len(rest[i])], true[rest[i]]) >= IOU_HIT) for i in has]))
  return out


def caption_scores(cands: List[str], refs: List[str], ex: np.ndarray,
                   seed: int) -> Dict[str, Any]:
  """Generated and true region captions of M queries of images ex [M] -> the grounded
  captioning metrics."""
  key = "grounded_caption/"
  scores = caption_metrics.score_all(cands, [[r] for r in refs])
  out = {key + k: scores[k] for k in ("exact_match", "cider", "bleu4")}
  out[key + "regions"] = len(cands)
  if len(cands) > 1:
    perm = derangement(len(cands), seed)
    shuffled = caption_metrics.score_all(cands, [[refs[i]] for i in perm])
    out.update({f"{key}shuffled_{k}": shuffled[k] for k in ("exact_match", "cider")})
  rest = others(ex)
  has = [i for i, o in enumerate(rest) if o]
  if has:
    out[key + "other_region_exact_match"] = float(np.mean(
        [any(cands[i].strip() == refs[j].strip() for j in rest[i]) for i in has]))
  out[key + "samples"] = [f"{c}  |  {r}" for c, r in zip(cands[:5], refs[:5])]
  return out


class _RegionEvaluator(base.Evaluator):
  """Applies to a model with the LocCa decoder and test data with regions."""

  def applies(self, ctx):
    if "locca" not in ctx.config.model.objective_heads:
      return "the model has no LocCa decoder (loss_weights.locca)"
    if "region_valid" not in ctx.test_batches()[0]:
      return "the test split has no regions (data.regions=True on the built-in scenes)"
    return None

  @staticmethod
  def _put(ctx, batch, key: str):
    """The model's inputs and batch[key], as global arrays over the batch axes."""
    arrays = ctx.put(batch, extra=(key,))
    return {k: v for k, v in arrays.items() if k != key}, arrays[key]


@base.register
class Referring(_RegionEvaluator):
  """Referring-expression accuracy (IoU >= 0.5) and mean IoU of LocCa's predicted boxes."""
  name = "referring"

  def run(self, ctx):
    model = ctx.model
    fn = ctx.jitted("referring", lambda p, b, t: refer(model, p, b, t))
    batches = ctx.test_batches()
    pred = []
    for batch in batches:
      ids = to_host(fn(ctx.params, *self._put(ctx, batch, "region_text")))
      pred.append(ids[np.asarray(batch["region_valid"])])
    ex, slot = queries(batches)
    boxes = np.concatenate([np.asarray(b["region_boxes"]) for b in batches])[ex, slot]
    vocab = text_vocab(model)
    pred_boxes = np.asarray(loc_lib.token_boxes(jnp.asarray(np.concatenate(pred)),
                                                model.cfg.loc_bins, vocab))
    return box_scores(pred_boxes, boxes, ex, ctx.config.seed)


@base.register
class GroundedCaption(_RegionEvaluator):
  """Exact match / CIDEr-D of LocCa's caption of each true box against the region's caption."""
  name = "grounded_caption"

  def run(self, ctx):
    model, config = ctx.model, ctx.config
    tok = ctx.cached("grounded_caption/tokenizer", lambda: text_lib.from_config(config.data))
    length = config.data.text_len
    fn = ctx.jitted("grounded_caption", lambda p, b, x: ground(
        model, p, b, x, length=length, bos_id=tok.cls_id, eos_id=tok.sep_id, pad_id=tok.pad_id))
    batches = ctx.test_batches()
    cands, refs = [], []
    for batch in batches:
      valid = np.asarray(batch["region_valid"])
      ids = to_host(fn(ctx.params, *self._put(ctx, batch, "region_boxes")))[valid]
      cands += [tok.decode(np.concatenate([row[:1], row[5:]])) for row in ids]
      refs += [tok.decode(row) for row in np.asarray(batch["region_text"])[valid]]
    ex, _ = queries(batches)
    return caption_scores(cands, refs, ex, config.seed)
