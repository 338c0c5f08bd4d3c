"""A tiny default (for subprocess tests): same structure, seconds per run."""
from tests.helpers import apply_overrides, tiny_config


def get_config():
  c = tiny_config()
  c.data.image_size = 16
  c.data.text_len = 12
  c.data.test_examples = 64
  c.data.train_examples = 512
  c.eval.batch_size = 32
  c.eval.num_examples = 64
  c.log_every_steps = 1
  return c


def dual_encoder_30_steps():
  """The tiny default as a dual encoder that learns in 30 contrastive steps (above chance on
  zero-shot): the trained model of the evaluation tests."""
  return apply_overrides(get_config(), {
      "model.fusion": "dual_encoder", "loss_weights.itm": 0.0, "loss_weights.mlm": 0.0,
      "loss_weights.mim": 0.0, "batch_size": 32, "total_steps": 30, "log_every_steps": 30,
      "mesh.data": 1, "optimizer.warmup_steps": 5, "optimizer.learning_rate": 3e-3})
