"""tests/tiny_config.py trained with the custom objective of tests/custom_objective_plugin.py
beside contrastive alignment (the config's `imports` key registers it)."""
from tests import tiny_config


def get_config():
  c = tiny_config.get_config()
  c.imports = ("tests/custom_objective_plugin.py",)
  c.loss_weights.cross_predict = 1.0
  c.total_steps = 6
  c.checkpoint.every_steps = 6
  c.eval.evaluators = ("retrieval",)
  return c
