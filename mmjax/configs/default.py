"""The embedded default: image-text on the built-in set, ALBEF-style fusion, trains on a CPU.

hier_multi_to_one: unimodal towers (contrastive on their pooled outputs), then a joint stream
(hard-negative ITM and masked modelling on the fused outputs).
"""
import ml_collections

from mmjax.data import config as data_config


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 400
  c.batch_size = 64            # global
  c.grad_accum_steps = 1
  c.nan_policy = "stop"        # stop | skip
  c.log_every_steps = 25
  c.init_from = ""             # workdir or <workdir>/checkpoints/<step>: start from its params
  c.freeze = ""                # e.g. 'image' (LiT), 'image,text' or 'fusion/tower_image'
  c.imports = ()               # user modules / .py files registering designs, objectives, evaluators
  c.imports = ()               # user modules / .py files registering designs, objectives, evaluators

  c.model = ml_collections.ConfigDict()
  c.model.fusion = "hier_multi_to_one"
  c.model.width = 128
  c.model.heads = 4
  c.model.mlp_dim = 512
  c.model.embed_dim = 128
  c.model.dtype = "float32"    # compute dtype; bfloat16 for mixed precision
  c.model.param_dtype = "float32"
  c.model.remat = "none"       # none | full | dots | dots_no_batch
  c.model.scan = False
  c.model.dropout = 0.0        # residual + embedding dropout, training only
  c.model.pool = "cls"
  c.model.pool_combine = "concat"
  c.model.cross_mode = "pure"
  c.model.share_cross = False
  c.model.early_sum_weights = "fixed"
  c.model.early_sum_align = "none"
  c.model.num_bottlenecks = 4
  c.model.decoder_depth = 2    # captioning decoder layers (loss_weights.caption)
  c.model.caption_from = ""    # the modality it describes ('' = the first non-text one)
  c.model.order_segments = 3   # sentence ordering: segments per text
  c.model.depth = ml_collections.ConfigDict(
      {"unimodal": 2, "joint": 2, "post": 0, "cross": 0})
  c.model.modalities = ml_collections.ConfigDict({
      "image": {"kind": "image", "patch": 4, "grid": (8, 8), "input_shape": (32, 32, 3)},
      "text": {"kind": "text", "vocab_size": 261, "max_len": 32},
  })

  c.attention = ml_collections.ConfigDict(
      {"impl": "auto", "chunk_size": 512, "capture_weights": False})

  # Survey Table 3: alignment (contrastive, sigmoid), masking (mlm, mim, mrc, mrfr),
  # matching (itm), describing (caption: a decoder, any fusion; prefix_lm: the joint stream)
  # and ordering (frame_order: video; sentence_order: text).
  c.loss_weights = ml_collections.ConfigDict(
      {"contrastive": 1.0, "sigmoid": 0.0, "mlm": 0.5, "mim": 0.5, "itm": 1.0,
       "caption": 0.0, "prefix_lm": 0.0, "frame_order": 0.0, "sentence_order": 0.0,
       "mrc": 0.0, "mrfr": 0.0})
  c.objectives = ml_collections.ConfigDict(
      {"mlm_prob": 0.15, "mim_ratio": 0.5, "norm_pix": True,
       "pack_text": False, "pack_rows": 0,  # MLM text packing (dual_encoder), mmjax.packing
       "cappa_fraction": 0.0,     # captioning rows trained by CapPa's parallel prediction
       "prefix_random": True,     # prefix-LM: random text prefix (SimVLM), else [CLS] only
       "frame_order_ratio": 0.5,  # frame ordering: fraction of tubelet groups shuffled
       "mrm_ratio": 0.15})        # masked region modelling: fraction of regions masked

  c.optimizer = ml_collections.ConfigDict({
      "learning_rate": 1e-3, "warmup_steps": 50, "weight_decay": 0.05, "b1": 0.9,
      "b2": 0.98, "eps": 1e-8, "grad_clip": 1.0, "end_lr_ratio": 0.0})

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.checkpoint = ml_collections.ConfigDict({"every_steps": 250, "keep": 3, "async_save": True})

  c.data = data_config.get_config()  # every data key, documented in mmjax/data/config.py
  c.data.update({"source": "builtin", "task": "image_text", "image_size": 32, "text_len": 32,
                 "tokenizer": "bytes"})
  c.eval = ml_collections.ConfigDict({
      "evaluators": ("zero_shot", "retrieval", "itm", "mlm", "mim"), "batch_size": 100,
      "num_examples": 1000, "every_steps": 0,  # every_steps > 0: evaluate during training "every_steps": 0,  # every_steps > 0: evaluate during training
      "caption_beam": 1, "caption_alpha": 0.0, "caption_max_len": 0})  # eval caption
  return c
