"""Cross-modal retrieval: Recall@1/5/10 in both directions over a test set of pairs.

Towers: similarity = <z_a, z_b> over all N x N pairs. Fusion without towers: ITM log P(match)
over all pairs of the first `max_itm_pairs_n` examples (N^2 fused forwards).
"""
from __future__ import annotations

import numpy as np

from mmjax.evaluators.common import quantize, take


def recall_at_k(sim: np.ndarray, ks=(1, 5, 10)) -> dict:
  """sim [N, N], the match of row i is column i. Returns R@k of rows (a->b) and columns.
  Rank = how many other candidates score at least as high (ties count against)."""
  n = sim.shape[0]
  out = {}
  sim = quantize(sim)
  for name, s in (("a2b", sim), ("b2a", sim.T)):
    rank = np.sum(s >= s[np.arange(n), np.arange(n)][:, None], axis=1) - 1  # 0 = first
    for k in ks:
      out[f"{name}_R@{k}"] = float(np.mean(rank < k))
  return out


def evaluate(ev, batches, max_itm_pairs_n: int = 100) -> dict:
  if ev.has_towers:
    za, zb = [], []
    for batch in batches:
      emb = ev.embeddings(ev.encode(batch))
      za.append(emb[ev.a])
      zb.append(emb[ev.b])
    za, zb = np.concatenate(za), np.concatenate(zb)
    sim, method = za @ zb.T, "embedding similarity"
  else:
    encs, n = [], 0
    for batch in batches:
      encs.append(ev.encode(batch))
      n += len(batch[ev.a])
      if n >= max_itm_pairs_n:
        break
    import jax  # pylint: disable=import-outside-toplevel
    enc = jax.tree.map(lambda *t: np.concatenate(t)[:max_itm_pairs_n], *encs)
    n = min(n, max_itm_pairs_n)
    sim = np.zeros((n, n))
    for i in range(n):
      pair = {ev.a: take(enc[ev.a], np.full((n,), i)), ev.b: enc[ev.b]}
      sim[i] = ev.itm_scores(pair)
    method = "ITM head"
  res = {f"retrieval/{k}": v for k, v in recall_at_k(sim).items()}
  n = sim.shape[0]
  res.update({"retrieval/examples": n, "retrieval/chance_R@1": 1.0 / n,
              "retrieval/method": method})
  return res
