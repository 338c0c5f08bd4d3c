"""mmjax: multimodal transformers in JAX/Flax, layered as the survey is.

tokenizers -> attention -> layers -> fusion -> models -> objectives -> train_lib -> trainer.

The library in a few lines (the README's example, run by tests/test_api.py):

  config = mmjax.load_config("default", {"batch_size": 8})
  model = mmjax.build_model(config)
  params = mmjax.init_params(model, jax.random.key(0))
  batch = mmjax.example_batch(config)
  loss, metrics = mmjax.pretraining_loss(model, params, batch, jax.random.key(1),
                                         mmjax.parse_config(config))

A program's CPU process settings (an XLA:CPU flag, glibc malloc settings) are its own to apply,
first thing: mmjax.platforms.apply_cpu_defaults() (docs/process_settings.md).
"""
from __future__ import annotations

from typing import Any, Dict

__version__ = "0.1.0"

# Importing mmjax changes nothing in the process (os.environ, malloc, absl flags). The CPU
# process settings are a program's choice: mmjax.platforms.apply_cpu_defaults(), which the
# entry points call before jax is imported (docs/process_settings.md).
from mmjax import platforms  # noqa: E402,F401  (stdlib only, no side effects: no jax import)

# Lazy (PEP 562): `import mmjax.data.text` stays cheap; `mmjax.build_model` imports on use.
_LAZY = {"Config": ("mmjax.config_lib", "Config"),
         "ConfigError": ("mmjax.config_lib", "ConfigError"),
         "load_config": ("mmjax.config_lib", "load_config"),
         "load": ("mmjax.inference", "load"),
         "parse_config": ("mmjax.configure", "resolve"),
         "FusionDesign": ("mmjax.fusion", "FusionDesign"),
         "register_fusion": ("mmjax.fusion", "register"),
         "MultimodalModel": ("mmjax.models", "MultimodalModel"),
         "build_model": ("mmjax.models", "build_model"),
         "dummy_batch": ("mmjax.models", "dummy_batch"),
         "Objective": ("mmjax.objectives", "Objective"),
         "register_objective": ("mmjax.objectives", "register"),
         "pretraining_loss": ("mmjax.objectives", "pretraining_loss")}


def __getattr__(name: str):
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'mmjax' has no attribute {name!r}")

__all__ = ["Config", "ConfigError", "FusionDesign", "MultimodalModel", "Objective",
           "build_model", "dummy_batch", "example_batch", "init_params", "load", "load_config",
           "parse_config", "pretraining_loss", "register_fusion", "register_objective", "train"]


def init_params(model, rng) -> Dict[str, Any]:
  """Every parameter of `model` ({'params': ...}, unboxed), initialized from `rng` in one
  compiled program (an eager init would compile each of its hundreds of ops alone)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from mmjax.models import dummy_batch  # pylint: disable=import-outside-toplevel
  batch = dummy_batch(model.cfg, 2)
  variables = jax.jit(lambda r: model.init(r, batch, method=model.init_all))(rng)
  return {"params": nn.meta.unbox(variables["params"])}


def example_batch(config, split: str = "train") -> Dict[str, Any]:
  """The first global batch of the configured data (the model's inputs only), as numpy."""
  from mmjax.data import pipeline  # pylint: disable=import-outside-toplevel
  from mmjax.configure import resolve  # pylint: disable=import-outside-toplevel
  from mmjax import tokenizers  # pylint: disable=import-outside-toplevel
  cfg = resolve(config)
  ds = pipeline.make_dataset(cfg.data, split, global_batch_size=cfg.batch_size, seed=cfg.seed,
                             shuffle=False, repeat=False)
  batch = next(iter(ds))
  keep = {k for m in cfg.model.names for k in tokenizers.input_keys(m)}
  return {k: v for k, v in batch.items() if k in keep}


def train(config, workdir: str, **kwargs):
  """Train (or resume) in `workdir`, as train.py does; see mmjax.trainer.train."""
  from mmjax import trainer  # pylint: disable=import-outside-toplevel
  return trainer.train(config, workdir, **kwargs)
