"""tests/tiny_config.py with the custom evaluator of tests/custom_evaluator_plugin.py, run every
2 steps during training (eval.every_steps) and by eval.py."""
from tests import tiny_config


def get_config():
  c = tiny_config.get_config()
  c.imports = ("tests/custom_evaluator_plugin.py",)
  c.eval.evaluators = ("pair_cosine", "caption")
  c.eval.every_steps = 2
  c.eval.num_examples = 16
  c.eval.batch_size = 8
  c.total_steps = 4
  c.checkpoint.every_steps = 4
  return c
