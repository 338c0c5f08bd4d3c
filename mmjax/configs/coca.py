"""CoCa on the built-in image-text set: contrastive towers + a captioning decoder, one step.

  python train.py --config=configs/coca.py --workdir=runs/coca
  python eval.py --workdir=runs/coca --evaluators=caption,retrieval,zero_shot
  python -m mmjax.generate --workdir=runs/coca --num_examples=8

dual_encoder towers (contrastive on their pooled outputs) and a 2-layer causal decoder
(mmjax.decoder) that cross-attends to the image tower's tokens and reads the text tower's
token and position tables: L = L_con + caption_weight * L_cap (CoCa weights captioning 2:1).
Scenes hold up to two objects, so a caption ("a red circle left of a blue square") is fixed
by the image: exact match is meaningful. objectives.cappa_fraction > 0 trains that fraction
of rows with CapPa's parallel prediction. Measured in docs/captioning.md.
"""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "dual_encoder"
  c.model.depth.update({"unimodal": 2, "joint": 0, "post": 0, "cross": 0})
  c.model.decoder_depth = 2
  c.model.modalities.text.max_len = 48
  c.data.text_len = 48          # the longest two-object caption is 44 bytes + [CLS], [SEP]
  c.data.max_objects = 2
  c.loss_weights.update({"contrastive": 1.0, "caption": 2.0, "mlm": 0.0, "mim": 0.0,
                         "itm": 0.0})
  c.objectives.cappa_fraction = 0.0
  c.eval.evaluators = ("caption", "retrieval", "zero_shot")
  c.eval.num_examples = 500
  return c
