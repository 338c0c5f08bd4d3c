"""Image-text matching against hard negatives that differ from the truth in one binding.

For each example x with true caption t and K negatives n_k: the model scores every pair
(ITM log P(match); a dual encoder uses its similarity). Reports the pairwise accuracy
(score(x, t) > score(x, n_k), chance 0.5) and the group accuracy (t beats all K, chance 1/(K+1)).
"""
from __future__ import annotations

import numpy as np

from mmjax.evaluators import base
from mmjax.evaluators.common import inputs, quantize, take


def pair_scores(ev, batch, texts: np.ndarray, per: int, valid=None) -> np.ndarray:
  """Scores [n, per] (quantized) of each of the batch's n first-modality inputs with its `per`
  rows of texts [n * per, L]: ITM log P(match) where the design has a joint output, else the
  embeddings' cosine similarity. valid [n * per]: the text rows' validity flags, if any."""
  n = len(texts) // per
  enc_x = ev.encode(inputs(batch, ev.a))
  text_in = {ev.b: texts}
  if valid is not None:
    text_in[f"{ev.b}_valid"] = valid
  enc_t = ev.encode(text_in)
  if ev.has_itm:
    idx = np.repeat(np.arange(n), per)
    scores = ev.itm_scores({ev.a: take(enc_x[ev.a], idx), ev.b: enc_t[ev.b]})
  else:
    za = ev.embeddings(enc_x)[ev.a]
    zt = ev.embeddings(enc_t)[ev.b].reshape(n, per, -1)
    scores = np.einsum("nd,nkd->nk", za, zt)
  return quantize(scores).reshape(n, per)


def evaluate(ev, batches) -> dict:
  pair_correct = group_correct = pairs = groups = 0
  k = None
  for batch in batches:
    neg = batch["neg_text"]  # [B, K, L]
    n, k, l = neg.shape
    texts = np.concatenate([batch[ev.b][:, None], neg], axis=1).reshape(n * (k + 1), l)
    valid = batch.get(f"{ev.b}_valid")
    scores = pair_scores(ev, batch, texts, k + 1,
                         None if valid is None else np.repeat(valid, k + 1))
    wins = scores[:, :1] > scores[:, 1:]
    pair_correct += int(wins.sum())
    group_correct += int(wins.all(axis=1).sum())
    pairs += n * k
    groups += n
  return {"itm/pairwise_accuracy": pair_correct / max(pairs, 1), "itm/pairwise_chance": 0.5,
          "itm/group_accuracy": group_correct / max(groups, 1),
          "itm/group_chance": 1.0 / ((k or 1) + 1), "itm/examples": groups,
          "itm/method": "ITM head" if ev.has_itm else "embedding similarity"}


@base.register
class Itm(base.Evaluator):
  """Pairwise and group accuracy against the test split's hard-negative captions."""
  name = "itm"

  def applies(self, ctx):
    if not ctx.text_second:
      return f"needs a text modality second; the model pairs {ctx.a}/{ctx.b}"
    if "neg_text" not in ctx.test_batches()[0]:
      return "the test split has no hard-negative captions (neg_text)"
    return None

  def run(self, ctx):
    return evaluate(ctx, ctx.test_batches())
