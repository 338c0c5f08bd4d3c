"""Cross-modal matching (survey: image-text matching): a 2-way head on the joint output of the
first two modalities, with hard negatives re-paired from the clean pass's towers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.layers import l2_normalize
from mmjax.masking import itm_hard_negatives
from mmjax.objectives import base
from mmjax.objectives.losses import itm_loss


def hard_negative_pairs(model, encoded, emb, rng):
  """(logits [3B, 2], labels [3B]): B positives, B (A_i, hard B) and B (hard A, B_j)
  negatives, drawn from the scaled cosine similarities of the contrastive embeddings."""
  a, b = model.modalities[0], model.modalities[1]
  za, zb = l2_normalize(emb[a]), l2_normalize(emb[b])
  log_scale = model.logit_scale if model.logit_scale is not None else np.log(1 / 0.07)
  scale = jnp.exp(log_scale).clip(max=100.0)
  sim = jax.lax.stop_gradient(scale * (za @ zb.T))  # scaled: softmax over cosines is flat
  neg_b, neg_a = itm_hard_negatives(rng, sim)
  take = lambda x, idx: jax.tree.map(lambda t: jnp.take(t, idx, axis=0), x)
  cat = lambda *xs: jax.tree.map(lambda *t: jnp.concatenate(t, axis=0), *xs)
  pairs = {m: cat(encoded[m], encoded[m], encoded[m]) for m in model.modalities}
  pairs[a] = cat(encoded[a], encoded[a], take(encoded[a], neg_a))
  pairs[b] = cat(encoded[b], take(encoded[b], neg_b), encoded[b])
  logits = model.itm_logits(model.interact(pairs)["joint"]).astype(jnp.float32)
  n = za.shape[0]
  labels = jnp.concatenate([jnp.ones((n,), jnp.int32), jnp.zeros((2 * n,), jnp.int32)])
  return logits, labels


@base.register
class ImageTextMatching(base.Objective):
  """ITM: cross entropy of matched vs not matched over the 3B pairs (losses.itm_loss)."""
  name = "itm"
  survey_name = "image-text matching"
  default_head = True
  requires = {"joint_output": "{design} has no cross-modal interaction, so there is no joint "
                              "output for the matching head; set loss_weights.itm=0 or choose "
                              "a fusion with interaction (e.g. hier_multi_to_one)"}

  def heads(self, model):
    return {"head": base.dense(model, 2, "itm_head")}

  def init(self, model, batch, encoded, out):
    model.itm_logits(out["joint"])

  def outputs(self, model, shared):
    return hard_negative_pairs(model, shared.clean(), shared.embeddings(), shared.rng_itm)

  def losses(self, outputs, objectives, mesh=None):
    return {self.name: itm_loss(*outputs)}
