"""Zero-shot classification with prompt templates (CLIP): top-1 accuracy over the classes.

Towers (dual encoder, unimodal towers): class embedding = normalized mean over templates of
the normalized prompt embeddings; prediction = argmax_c <z_x, z_c>. Fusion without towers:
prediction = argmax_c log P(match | x, prompt_c) from the ITM head (first template).
Correct means the true class scores strictly highest (ties are misses).
"""
from __future__ import annotations

import numpy as np

from mmjax.evaluators.common import concat, pad_rows, strictly_best, take


def _chunks(ev, ids: np.ndarray, chunk: int):
  """[n, L] ids in row chunks of `chunk` (a multiple of the devices), the last one padded,
  so every chunk has one shape (one compile)."""
  n_dev = ev.mesh.size
  chunk = max(n_dev, min(chunk, len(ids) + (-len(ids)) % n_dev) // n_dev * n_dev)
  return [pad_rows(ids[i:i + chunk], chunk) for i in range(0, len(ids), chunk)]


def evaluate(ev, batches, prompts: np.ndarray) -> dict:
  """prompts: int ids [C, T, L] (class x template x length). batches yield 'label'.
  Prompts are encoded eval.batch_size at a time (C x T can be large: 1000 classes x 80)."""
  c, t, l = prompts.shape
  chunk = ev.config.eval.batch_size
  correct = total = 0
  if ev.has_towers:
    z = np.concatenate([ev.embeddings(ev.encode({ev.b: ids}))[ev.b]
                        for ids in _chunks(ev, prompts.reshape(c * t, l), chunk)])
    z = z[:c * t].reshape(c, t, -1).mean(1)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)
    for batch in batches:
      za = ev.embeddings(ev.encode({ev.a: batch[ev.a]}))[ev.a]
      correct += int(np.sum(strictly_best(za @ z.T, batch["label"])))
      total += len(za)
    method = "embedding similarity"
  else:
    enc_prompts = concat(*(ev.encode({ev.b: ids}) for ids in _chunks(ev, prompts[:, 0], chunk)))
    for batch in batches:
      enc_x = ev.encode({ev.a: batch[ev.a]})
      n = len(batch["label"])
      scores = np.zeros((n, c))
      for k in range(c):
        pair = {ev.a: enc_x[ev.a], ev.b: take(enc_prompts[ev.b], np.full((n,), k))}
        scores[:, k] = ev.itm_scores(pair)
      correct += int(np.sum(strictly_best(scores, batch["label"])))
      total += n
    method = "ITM head"
  return {"zero_shot/accuracy": correct / max(total, 1), "zero_shot/chance": 1.0 / c,
          "zero_shot/num_classes": c, "zero_shot/examples": total,
          "zero_shot/method": method}
