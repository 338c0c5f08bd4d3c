"""The embedded default: image-text on the built-in set, ALBEF-style fusion, trains on a CPU.

hier_multi_to_one: unimodal towers (contrastive on their pooled outputs), then a joint stream
(masked modelling and hard-negative ITM on the fused outputs).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1500
  c.batch_size = 64

  c.model = ml_collections.ConfigDict()
  c.model.fusion = "hier_multi_to_one"
  c.model.width = 128
  c.model.heads = 4
  c.model.mlp_dim = 512
  c.model.embed_dim = 128
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.remat = "none"
  c.model.scan = False
  c.model.pool = "cls"
  c.model.pool_combine = "concat"
  c.model.cross_mode = "pure"
  c.model.share_cross = False
  c.model.early_sum_weights = "fixed"
  c.model.early_sum_align = "none"
  c.model.num_bottlenecks = 4
  c.model.depth = ml_collections.ConfigDict(
      {"unimodal": 2, "joint": 2, "post": 0, "cross": 0})
  c.model.modalities = ml_collections.ConfigDict({
      "image": {"kind": "image", "patch": 4, "grid": (8, 8), "input_shape": (32, 32, 3)},
      "text": {"kind": "text", "vocab_size": 261, "max_len": 32},
  })

  c.attention = ml_collections.ConfigDict({"impl": "auto", "chunk_size": 512,
                                           "capture_weights": False})
  return c
