"""Masked modelling (survey: masked language / image modelling): BERT-masked text and MAE-style
masked patches of image / video / audio, predicted from one forward of the masked batch."""
from __future__ import annotations

import functools

import jax.numpy as jnp

from mmjax.objectives import base
from mmjax.objectives.losses import mim_loss, mlm_loss


@base.register
class MaskedLanguageModelling(base.Objective):
  """MLM: cross entropy on the masked text tokens (losses.mlm_loss); with objectives.pack_text
  the text tower runs on packed rows (MultimodalModel.packed_mlm)."""
  name = "mlm"
  survey_name = "masked language modelling"
  default_head = True
  masks = ("text",)

  def heads(self, model):
    text = [m for m in model.cfg.modalities if m.kind == "text"]
    return {"head": {m.name: base.dense(model, m.option("vocab_size"), f"mlm_head_{m.name}",
                                        ("embed", "vocab")) for m in text},
            "norm": {m.name: base.layer_norm(model, f"mlm_ln_{m.name}") for m in text}}

  def init(self, model, batch, encoded, out):
    for m in model.heads[self.name]["head"]:
      model.mlm_logits(m, out["tokens"][m])

  def outputs(self, model, shared):
    mk, batch = shared.masked(), shared.batch
    out = {m: model.packed_mlm(m, mk.batch[m], batch[f"{m}_pack_index"], *mk.text[m],
                               batch.get(f"{m}_valid")) for m in mk.packed}
    rest = [m for m in mk.text if m not in mk.packed]
    if rest:
      tokens = shared.masked_tokens()
      out.update({m: (model.mlm_logits(m, tokens[m][:, :batch[m].shape[1]]), *mk.text[m])
                  for m in rest})
    return out

  def losses(self, outputs, objectives, mesh=None):
    return base.per_modality(self.name, outputs, mlm_loss)


@base.register
class MaskedPatchModelling(base.Objective):
  """MIM: regression of the masked patches' values (losses.mim_loss, objectives.norm_pix)."""
  name = "mim"
  survey_name = "masked image / video / audio modelling (MAE)"
  default_head = True
  masks = ("patches",)

  def heads(self, model):
    return {"head": {m.name: base.dense(model, m.patch_dim, f"mim_head_{m.name}")
                     for m in model.cfg.modalities if m.kind not in ("text", "regions")}}

  def init(self, model, batch, encoded, out):
    for m in model.heads[self.name]["head"]:
      model.mim_prediction(m, out["tokens"][m])

  def outputs(self, model, shared):
    mk, out = shared.masked(), {}
    tokens = shared.masked_tokens() if mk.patches else {}
    for m, target in mk.patches.items():
      start, n = base.stream_start(model, m), target.shape[1]
      pred = model.mim_prediction(m, tokens[m][:, start:start + n])
      out[m] = (pred, target, mk.masks[m].astype(jnp.float32))
    return out

  def losses(self, outputs, objectives, mesh=None):
    return base.per_modality(self.name, outputs,
                             functools.partial(mim_loss, norm_pix=objectives.norm_pix))
