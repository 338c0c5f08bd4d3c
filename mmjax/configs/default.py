"""The embedded default: image-text on the built-in set, ALBEF-style fusion, trains on a CPU.

hier_multi_to_one: unimodal towers (contrastive on their pooled outputs), then a joint stream
(hard-negative ITM and masked modelling on the fused outputs). Every other key is at its
default (mmjax/config_lib.py states each once; `base_config()` holds them all, so any key can
be overridden with --config.KEY=VALUE).
"""
import ml_collections

from mmjax import config_lib


def get_config():
  c = config_lib.base_config()
  c.total_steps = 400

  c.model.fusion = "hier_multi_to_one"
  c.model.width, c.model.heads, c.model.mlp_dim = 128, 4, 512
  c.model.depth.update({"unimodal": 2, "joint": 2})
  c.model.modalities = ml_collections.ConfigDict({
      "image": {"kind": "image", "patch": 4, "grid": (8, 8), "input_shape": (32, 32, 3)},
      "text": {"kind": "text", "vocab_size": 261, "max_len": 32},
  })

  # Survey Table 3: alignment (contrastive, sigmoid), masking (mlm, mim, mrc, mrfr),
  # matching (itm), describing (caption: a decoder, any fusion; prefix_lm: the joint stream)
  # and ordering (frame_order: video; sentence_order: text).
  c.loss_weights = ml_collections.ConfigDict(
      {"contrastive": 1.0, "sigmoid": 0.0, "mlm": 0.5, "mim": 0.5, "itm": 1.0,
       "caption": 0.0, "prefix_lm": 0.0, "frame_order": 0.0, "sentence_order": 0.0,
       "mrc": 0.0, "mrfr": 0.0})

  c.optimizer.update({"warmup_steps": 50, "weight_decay": 0.05, "b2": 0.98, "grad_clip": 1.0})
  c.checkpoint.every_steps = 250
  # data: the built-in image-text set at 32 px, 32 bytes of text (mmjax/data/config.py)
  return c
