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

from mmjax import generate
from mmjax.data import text as text_lib
from mmjax.evaluators import base, caption_metrics


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


@base.register
class Caption(base.Evaluator):
  """CIDEr-D / BLEU of generated captions (eval.caption_beam, caption_alpha, caption_max_len)."""
  name = "caption"

  def applies(self, ctx):
    heads = ctx.config.model.objective_heads
    if "caption" not in heads and "prefix_lm" not in heads:
      return ("the model has no captioning decoder or prefix-LM head (loss_weights.caption / "
              "prefix_lm)")
    return None

  def run(self, ctx):
    config, e = ctx.config, ctx.config.eval
    gen = ctx.cached("caption/generator", lambda: generate.for_config(
        config, ctx.model, ctx.params, ctx.mesh))
    gen.params = ctx.params  # this evaluation point's params; its jitted decoders are kept
    tok = ctx.cached("caption/tokenizer", lambda: text_lib.from_config(config.data))
    return evaluate(ctx, ctx.test_batches(), gen, tok,
                    max_len=e.caption_max_len or config.data.text_len, beam=e.caption_beam,
                    alpha=e.caption_alpha, seed=config.seed)
