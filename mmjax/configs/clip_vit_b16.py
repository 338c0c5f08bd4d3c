"""CLIP ViT-B/16: dual encoder, ViT-B/16 image tower + 12-layer text tower, InfoNCE.

CLIP's layout: the image tower is 768 wide (12 heads, MLP 3072), the text tower 512 wide
(8 heads, MLP 2048), each projected to a 512-d embedding. Images 224x224 in 16x16 patches
(196 + [CLS]), text 77 tokens.
"""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "dual_encoder"
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 768, 12, 3072, 512
  c.model.depth.update({"unimodal": 12, "joint": 0, "post": 0, "cross": 0})
  c.model.modalities.image.update({"patch": 16, "grid": (14, 14), "input_shape": (224, 224, 3)})
  c.model.modalities.text.update({"max_len": 77, "width": 512, "heads": 8, "mlp_dim": 2048})
  c.loss_weights.update({"contrastive": 1.0, "sigmoid": 0.0, "mlm": 0.0, "mim": 0.0,
                         "itm": 0.0})
  c.data.update({"image_size": 224, "text_len": 77})
  c.batch_size = 8
  c.optimizer.learning_rate = 5e-4
  c.optimizer.warmup_steps = 2000
  c.optimizer.weight_decay = 0.2
  c.total_steps = 100_000
  c.checkpoint.every_steps = 2000
  c.eval.evaluators = ("zero_shot", "retrieval", "itm")
  return c
