"""Small configs and batches shared by the training tests."""
import numpy as np

from mmjax.configs import default


def tiny_config(fusion="hier_multi_to_one", **overrides):
  c = default.get_config()
  c.model.fusion = fusion
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 4, 64, 32
  c.model.depth.update({"unimodal": 1, "joint": 1, "cross": 1, "post": 1})
  c.model.modalities.image.input_shape = (16, 16, 3)
  c.model.modalities.image.grid = (4, 4)
  c.model.modalities.text.max_len = 12
  c.batch_size = 8
  c.total_steps = 10
  c.optimizer.warmup_steps = 2
  if fusion == "dual_encoder":
    c.loss_weights.itm = 0.0
  apply_overrides(c, overrides)
  return c


def apply_overrides(config, overrides):
  """Set dotted keys ('loss_weights.itm') on a ConfigDict, like --config.KEY=VALUE."""
  for k, v in overrides.items():
    node = config
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return config


def random_batch(config, seed=0, batch_size=None):
  rng = np.random.RandomState(seed)
  b = batch_size or config.batch_size
  h, w, ch = config.model.modalities.image.input_shape
  n = config.model.modalities.text.max_len
  text = rng.randint(5, 261, size=(b, n)).astype(np.int32)
  lengths = rng.randint(4, n, size=b)
  text[np.arange(n)[None] >= lengths[:, None]] = 0
  text[:, 0] = 1
  return {"image": rng.randn(b, h, w, ch).astype(np.float32), "text": text}
