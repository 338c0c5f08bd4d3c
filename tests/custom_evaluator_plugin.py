"""An evaluator added in this file alone: registered on import, which the config's `imports`
key does for train.py and eval.py (tests/test_custom_evaluator.py)."""
import numpy as np

from mmjax import evaluators


@evaluators.register
class PairCosine(evaluators.Evaluator):
  """Mean cosine similarity of each test pair's contrastive embeddings, beside that of
  mismatched pairs (the batch rolled by one): aligned embeddings score higher matched."""
  name = "pair_cosine"

  def applies(self, ctx):
    return None if ctx.has_towers else "needs per-modality towers"

  def run(self, ctx):
    matched, mismatched = [], []
    for batch in ctx.test_batches():
      z = ctx.embeddings(ctx.encode(batch))
      za, zb = z[ctx.a], z[ctx.b]
      matched.append(np.sum(za * zb, axis=1))
      mismatched.append(np.sum(za * np.roll(zb, 1, axis=0), axis=1))
    matched, mismatched = np.concatenate(matched), np.concatenate(mismatched)
    return {f"{self.name}/matched": float(matched.mean()),
            f"{self.name}/mismatched": float(mismatched.mean()),
            f"{self.name}/examples": len(matched)}
