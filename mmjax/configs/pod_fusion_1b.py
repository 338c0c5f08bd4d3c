"""Pod scale: a ~1B-parameter early_concat fusion encoder (ViLT-style single stream) with MLM,
MIM and ITM, FSDP x tensor parallel, bf16, scanned and rematerialized layers."""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "early_concat"
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 2048, 16, 8192, 768
  c.model.depth.update({"unimodal": 0, "joint": 20, "post": 0, "cross": 0})
  c.model.modalities.image.update({"patch": 16, "grid": (14, 14), "input_shape": (224, 224, 3)})
  c.model.modalities.text.update({"max_len": 128, "vocab_size": 32_000})
  c.model.dtype = "bfloat16"
  c.model.scan = True
  c.model.remat = "dots_no_batch"
  c.loss_weights.update({"contrastive": 0.0, "sigmoid": 0.0, "mlm": 1.0, "mim": 0.5,
                         "itm": 1.0})
  c.data.update({"image_size": 224, "text_len": 128})
  c.batch_size = 4096
  c.mesh.update({"data": 1, "fsdp": -1, "tensor": 4})
  return c
