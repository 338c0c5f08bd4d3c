"""Cross-modal retrieval: Recall@1/5/10 in both directions over a test set of pairs.

Towers: similarity = <z_a, z_b> over all N x N pairs. Fusion without towers: ITM log P(match)
over all pairs of the first `max_itm_pairs_n` examples (N^2 fused forwards).

Several captions per example (batches with 'texts' [N, C, L] and 'num_captions' [N], from
data.max_captions > 1), the COCO / Flickr30k protocol over the M = sum num_captions valid
captions, caption m belonging to example o(m): sim [N, M];
  a2b (image -> text): hit at k when ANY caption of image i ranks within the top k of all M,
      rank_i = #{m : o(m) != i, sim[i, m] >= max_{o(m') = i} sim[i, m']}; mean over N images;
  b2a (text -> image): per caption, rank_m = #{i != o(m) : sim[i, m] >= sim[o(m), m]}; mean
      over M captions.
Ties count against (a collapsed model scores chance, not perfect). With one caption per
example (o = identity) both equal recall_at_k.
"""
from __future__ import annotations

import numpy as np

from mmjax.evaluators import base
from mmjax.evaluators.common import concat, inputs, pad_rows, quantize, take


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


def recall_at_k_multi(sim: np.ndarray, owner: np.ndarray, ks=(1, 5, 10)) -> dict:
  """sim [N, M] (image x caption), owner [M] int: the image of each caption (every image has at
  least one). R@k as in the module doc: a2b over images (any own caption), b2a over captions."""
  sim, owner = quantize(sim), np.asarray(owner)
  n, m = sim.shape
  if owner.shape != (m,) or owner.min(initial=0) < 0 or owner.max(initial=0) >= n:
    raise ValueError(f"owner must be [{m}] image ids in [0, {n}), got shape {owner.shape}; "
                     "give each caption the index of its image")
  own = owner[None, :] == np.arange(n)[:, None]  # [N, M]
  if not own.any(axis=1).all():
    raise ValueError("an image has no caption; give every image at least one (num_captions >= 1)")
  best = np.where(own, sim, -np.inf).max(axis=1)  # [N] the best own caption's score
  rank_a = np.sum((sim >= best[:, None]) & ~own, axis=1)
  true_b = sim[owner, np.arange(m)]  # [M]
  rank_b = np.sum((sim >= true_b[None, :]) & ~own, axis=0)
  out = {}
  for name, rank in (("a2b", rank_a), ("b2a", rank_b)):
    for k in ks:
      out[f"{name}_R@{k}"] = float(np.mean(rank < k))
  return out


def _flat_captions(batches):
  """Batches with 'texts' [B, C, L], 'num_captions' [B] -> (ids [M, L], owner [M], N)."""
  texts = np.concatenate([np.asarray(b["texts"]) for b in batches])
  count = np.concatenate([np.asarray(b["num_captions"]) for b in batches]).astype(np.int64)
  valid = np.arange(texts.shape[1])[None, :] < np.clip(count, 1, texts.shape[1])[:, None]
  owner = np.nonzero(valid)[0]
  return texts[valid], owner, len(texts)


def _encode_rows(ev, modality: str, ids: np.ndarray, chunk: int):
  """Encodes [M, ...] rows in chunks of one shape (a multiple of the devices, the last one
  padded); returns the concatenated encodings (M rounded up to the chunk)."""
  n_dev = ev.mesh.size
  chunk = max(n_dev, min(chunk, len(ids) + (-len(ids)) % n_dev) // n_dev * n_dev)
  return concat(*(ev.encode({modality: pad_rows(ids[i:i + chunk], chunk)})
                  for i in range(0, len(ids), chunk)))


def _evaluate_multi(ev, batches, max_itm_pairs_n: int) -> dict:
  """Every valid caption of every example against every example (module doc)."""
  ids, owner, n = _flat_captions(batches)
  chunk = max(len(b[ev.a]) for b in batches)
  if ev.has_towers:
    za = np.concatenate([ev.embeddings(ev.encode(inputs(b, ev.a)))[ev.a] for b in batches])
    zb = ev.embeddings(_encode_rows(ev, ev.b, ids, chunk))[ev.b][:len(ids)]
    sim, method = za @ zb.T, "embedding similarity"
  else:
    n = min(n, max_itm_pairs_n)
    keep = owner < n
    ids, owner = ids[keep], owner[keep]
    enc_a = _encode_rows(ev, ev.a, np.concatenate([b[ev.a] for b in batches])[:n], chunk)
    enc_b = _encode_rows(ev, ev.b, ids, chunk)
    rows = len(enc_b[ev.b])
    sim = np.zeros((n, len(ids)))
    for i in range(n):
      pair = {ev.a: take(enc_a[ev.a], np.full((rows,), i)), ev.b: enc_b[ev.b]}
      sim[i] = ev.itm_scores(pair)[:len(ids)]
    method = "ITM head"
  res = {f"retrieval/{k}": v for k, v in recall_at_k_multi(sim, owner).items()}
  res.update({"retrieval/examples": n, "retrieval/captions": len(ids),
              "retrieval/chance_R@1": 1.0 / n, "retrieval/method": method})
  return res


def evaluate(ev, batches, max_itm_pairs_n: int = 100) -> dict:
  if "texts" in batches[0] and ev.b == "text":  # several captions per example
    return _evaluate_multi(ev, batches, max_itm_pairs_n)
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


@base.register
class Retrieval(base.Evaluator):
  """Recall@K of each modality retrieving the other over the test examples."""
  name = "retrieval"

  def run(self, ctx):
    return evaluate(ctx, ctx.test_batches())
