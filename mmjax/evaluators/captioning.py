"""Captioning: generate a caption per test example and score it against the references.

Candidates come from mmjax.generate (greedy, or beam search with eval.caption_beam > 1);
references are the example's own captions, decoded from its token ids (every valid caption of
'texts' [N, C, L] when the set has several). Scores (mmjax.evaluators.caption_metrics): CIDEr-D,
BLEU-1..4, exact match. Beside them the same candidates scored against a derangement of the
references (every example gets another example's captions): the shuffled-caption baseline, what
a captioner that ignores its input would score on this set's caption distribution at best.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from mmjax.evaluators import caption_metrics


def references(tokenizer, batch, text: str) -> List[List[str]]:
  """The captions of each example of a batch: 'texts' [B, C, L] (first num_captions), else
  the single caption 'text' [B, L]."""
  if "texts" in batch:
    counts = np.asarray(batch.get("num_captions", np.full(len(batch["texts"]),
                                                          batch["texts"].shape[1])))
    return [[tokenizer.decode(r) for r in rows[:max(int(c), 1)]]
            for rows, c in zip(np.asarray(batch["texts"]), counts)]
  return [[tokenizer.decode(r)] for r in np.asarray(batch[text])]


def derangement(n: int, seed: int) -> np.ndarray:
  """A permutation of range(n) without fixed points (n >= 2): a random cyclic shift of a
  random order."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(n)
  out = np.empty(n, np.int64)
  out[order] = np.roll(order, 1 + int(rng.integers(n - 1)) if n > 1 else 0)
  return out


def evaluate(ev, batches, generator, tokenizer, *, max_len: int, beam: int = 1,
             alpha: float = 0.0, seed: int = 0, samples: int = 5) -> Dict[str, Any]:
  """caption/{cider, bleu1..4, exact_match}, the shuffled baseline of each as
  caption/shuffled_*, caption/examples, and a few (generated, reference) samples."""
  text = ev.model.cfg.caption_text
  cands: List[str] = []
  refs: List[List[str]] = []
  for b in batches:
    ids = generator(ev.put(b), max_len=max_len, beam=beam, alpha=alpha)
    cands += [tokenizer.decode(r) for r in ids]
    refs += references(tokenizer, b, text)
  scores = caption_metrics.score_all(cands, refs)
  out: Dict[str, Any] = {f"caption/{k}": v for k, v in scores.items()}
  if len(cands) > 1:
    perm = derangement(len(cands), seed)
    shuffled = caption_metrics.score_all(cands, [refs[i] for i in perm])
    out.update({f"caption/shuffled_{k}": v for k, v in shuffled.items()
                if k in ("cider", "bleu4", "exact_match")})
  out["caption/examples"] = len(cands)
  out["caption/samples"] = [f"{c}  |  {r[0]}" for c, r in zip(cands[:samples], refs[:samples])]
  return out
