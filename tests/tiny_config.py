"""A tiny default (for subprocess tests): same structure, seconds per run."""
from tests.helpers import tiny_config


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
