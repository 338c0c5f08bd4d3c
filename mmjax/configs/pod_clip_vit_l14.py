"""Pod scale: CLIP ViT-L/14 dual encoder, FSDP over every chip, bf16 compute, scanned and
rematerialized layers (for TPU v5p/v5e slices or GPU clusters).

Both towers are 24 x 1024 (16 heads, MLP 4096); CLIP ViT-L/14's own text tower is 12 x 768,
which a modality-level width and depth could express (docs/pod_compile.md was measured with
this layout)."""
from mmjax.configs import clip_vit_b16


def get_config():
  c = clip_vit_b16.get_config()
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 1024, 16, 4096, 768
  c.model.depth.unimodal = 24
  c.model.modalities.text.update({"width": 1024, "heads": 16, "mlp_dim": 4096})
  c.model.modalities.image.update({"patch": 14, "grid": (16, 16), "input_shape": (224, 224, 3)})
  c.model.dtype = "bfloat16"
  c.model.scan = True
  c.model.remat = "dots_no_batch"
  c.batch_size = 32_768
  c.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
  return c
