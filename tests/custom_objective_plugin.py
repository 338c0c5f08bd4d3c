"""A pretraining objective added in this file alone: registered on import, which the config's
`imports` key does for train.py and eval.py (tests/test_custom_objective.py).

Cross-modal embedding prediction: a linear predictor P maps the first modality's contrastive
embedding to the second's, L = mean_i (1 - cos(P z_a,i, sg(z_b,i))) (BYOL-style, the target
held fixed)."""
import jax
import jax.numpy as jnp

from mmjax import objectives
from mmjax.layers import l2_normalize


@objectives.register
class CrossModalPrediction(objectives.Objective):
  name = "cross_predict"
  survey_name = "toy: cross-modal embedding prediction"
  requires = {"towers": "{design} has no per-modality towers, so there are no unimodal "
                        "embeddings to predict between; set loss_weights.{name}=0 or choose "
                        "a fusion with towers (e.g. dual_encoder)"}

  def check(self, model, objectives_cfg):
    if len(model.names) < 2:
      raise ValueError(f"objective {self.name!r} needs two modalities; the model has "
                       f"{list(model.names)}")

  def heads(self, model):
    return {"predictor": objectives.dense(model, model.cfg.embed_dim, "cross_predict_head")}

  def init(self, model, batch, encoded, out):
    model.heads[self.name]["predictor"](jnp.zeros((1, model.cfg.embed_dim), model.cfg.block.dtype))

  def outputs(self, model, shared):
    a, b = model.modalities[0], model.modalities[1]
    z = shared.embeddings()
    pred = model.heads[self.name]["predictor"](z[a]).astype(jnp.float32)
    return pred, jax.lax.stop_gradient(z[b])

  def losses(self, outputs, objectives_cfg, mesh=None):
    pred, target = outputs
    cos = jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1)
    return {self.name: (jnp.mean(1.0 - cos), {"cosine": jnp.mean(cos)})}
