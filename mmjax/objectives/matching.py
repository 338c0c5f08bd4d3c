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


def negative_pairs(modalities, encoded, za, zb, log_scale, rng):
  """(pairs {m: [3B, ...]}, labels [3B]): B positives, B (A_i, hard B) and B (hard A, B_j)
  negatives of the first two modalities, drawn from the scaled cosine similarities of their
  contrastive embeddings za, zb [B, E] (`itm_hard_negatives`); the other modalities ride along."""
  a, b = modalities[0], modalities[1]
  za, zb = l2_normalize(za), l2_normalize(zb)
  scale = jnp.exp(log_scale).clip(max=100.0)
  sim = jax.lax.stop_gradient(scale * (za @ zb.T))  # scaled: softmax over cosines is flat
  neg_b, neg_a = itm_hard_negatives(rng, sim)
  take = lambda x, idx: jax.tree.map(lambda t: jnp.take(t, idx, axis=0), x)
  cat = lambda *xs: jax.tree.map(lambda *t: jnp.concatenate(t, axis=0), *xs)
  pairs = {m: cat(encoded[m], encoded[m], encoded[m]) for m in modalities}
  pairs[a] = cat(encoded[a], encoded[a], take(encoded[a], neg_a))
  pairs[b] = cat(encoded[b], take(encoded[b], neg_b), encoded[b])
  n = za.shape[0]
  labels = jnp.concatenate([jnp.ones((n,), jnp.int32), jnp.zeros((2 * n,), jnp.int32)])
  return pairs, labels


def pair_logits(model, pairs):
  """[R, 2] float32: the ITM head on the interaction of R paired streams."""
  return model.itm_logits(model.interact(pairs)["joint"]).astype(jnp.float32)


def _log_scale(model):
  return model.logit_scale if model.logit_scale is not None else jnp.float32(np.log(1 / 0.07))


def hard_negative_pairs(model, encoded, emb, rng):
  """(logits [3B, 2], labels [3B]) of `negative_pairs` on the clean towers and embeddings."""
  a, b = model.modalities[0], model.modalities[1]
  pairs, labels = negative_pairs(model.modalities, encoded, emb[a], emb[b], _log_scale(model),
                                 rng)
  return pair_logits(model, pairs), labels


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

  cacheable = True  # exact accumulation: negatives mined over the whole batch

  def outputs(self, model, shared):
    return hard_negative_pairs(model, shared.clean(), shared.embeddings(), shared.rng_itm)

  def losses(self, outputs, objectives, mesh=None):
    return {self.name: itm_loss(*outputs)}

  def cache(self, model, shared):
    """The towers' outputs, the first two modalities' embeddings and the temperature."""
    a, b = model.modalities[0], model.modalities[1]
    emb = shared.embeddings()
    return {"encoded": shared.clean(), "za": emb[a], "zb": emb[b],
            "log_scale": jnp.asarray(_log_scale(model), jnp.float32),
            "modalities": tuple(model.modalities)}

  def cached_losses(self, cached, objectives, mesh, run):
    """The whole batch's hard negatives (mined with the step's ITM stream, as without
    accumulation), the 3B pairs' interaction and head run in run.chunks rematerialized
    chunks of the pairs: every pair's loss and gradient, one micro-batch's memory."""
    rng_itm = base.streams(run.rng)[0]
    pairs, labels = negative_pairs(cached["modalities"], cached["encoded"], cached["za"],
                                   cached["zb"], cached["log_scale"], rng_itm)
    logits = run.rows(pair_logits, pairs, jax.random.fold_in(run.rng, 8))
    return {self.name: itm_loss(logits, labels)}
