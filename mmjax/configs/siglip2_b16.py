"""The SigLIP 2 recipe at the paper's B/16 shape: ViT-B/16 image tower and a 12-layer text
tower, both 768 wide, an attention-pool (MAP) image head; the sigmoid loss, the LocCa
decoder, and SILC / TIPS over the last 20% of training from the EMA teacher.

Shapes (Tschannen et al., 2025, B/16 at 256 px): images 256x256 in 16x16 patches (256
tokens), text 64 tokens, embeddings 768-d, a 6-layer LocCa decoder, 500 location bins per
coordinate. The region tasks need boxes: the built-in image_text scenes with data.regions=True
(at 256 px here) are what mmjax provides; web-scale region data is not shipped.

  python train.py --config=configs/siglip2_b16.py --workdir=runs/siglip2_b16
"""
from mmjax.configs import siglip2


def get_config():
  c = siglip2.get_config()
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 768, 12, 3072, 768
  c.model.depth.update({"unimodal": 12})
  c.model.decoder_depth = 6
  c.model.loc_bins = 500
  c.model.prototypes = 8192
  c.model.modalities.image.update({"patch": 16, "grid": (16, 16), "input_shape": (256, 256, 3),
                                   "pool": "map", "add_cls": False})  # 256 tokens, no [CLS]
  c.model.modalities.text.update({"max_len": 64})
  c.data.update({"image_size": 256, "text_len": 64})
  c.batch_size = 256
  c.total_steps = 100_000
  c.objectives.starts = {"silc": 80_000, "tips": 80_000}
  c.optimizer.update({"learning_rate": 1e-3, "warmup_steps": 2000, "weight_decay": 1e-4,
                      "ema_decay": 0.999})
  c.checkpoint.every_steps = 2000
  return c
