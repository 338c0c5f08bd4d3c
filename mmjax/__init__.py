"""mmjax: multimodal transformers in JAX/Flax, layered as the survey is.

tokenizers -> attention -> layers -> fusion -> models -> objectives -> train_lib -> trainer.

The library in a few lines (the README's example, run by tests/test_api.py):

  config = mmjax.load_config("default", {"batch_size": 8})
  model = mmjax.build_model(config)
  params = mmjax.init_params(model, jax.random.key(0))
  batch = mmjax.example_batch(config)
  loss, metrics = mmjax.pretraining_loss(model, params, batch, jax.random.key(1), config)
"""
from __future__ import annotations

from typing import Any, Dict

__version__ = "0.1.0"

from mmjax import platforms as _platforms  # noqa: E402  (stdlib only: no jax import)

_platforms.set_default_xla_flags()  # XLA:CPU's faster float32 dot path (mmjax/platforms.py)
_platforms.set_default_malloc()  # CPU-only: no page faults on every step (mmjax/platforms.py)

# Lazy (PEP 562): `import mmjax.data.text` stays cheap; `mmjax.build_model` imports on use.
_LAZY = {"Config": ("mmjax.config_lib", "Config"),
         "ConfigError": ("mmjax.config_lib", "ConfigError"),
         "load_config": ("mmjax.config_lib", "load_config"),
         "parse_config": ("mmjax.config_lib", "parse"),
         "FusionDesign": ("mmjax.fusion", "FusionDesign"),
         "register_fusion": ("mmjax.fusion", "register"),
         "MultimodalModel": ("mmjax.models", "MultimodalModel"),
         "build_model": ("mmjax.models", "build_model"),
         "dummy_batch": ("mmjax.models", "dummy_batch")}


def __getattr__(name: str):
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'mmjax' has no attribute {name!r}")

__all__ = ["Config", "ConfigError", "FusionDesign", "MultimodalModel", "build_model",
           "dummy_batch", "example_batch", "init_params", "load_config", "parse_config",
           "pretraining_loss", "register_fusion", "train"]


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
  from mmjax.config_lib import parse  # pylint: disable=import-outside-toplevel
  cfg = parse(config)
  ds = pipeline.make_dataset(cfg.data, split, global_batch_size=cfg.batch_size, seed=cfg.seed,
                             shuffle=False, repeat=False)
  batch = next(iter(ds))
  keep = set(cfg.model.names) | {f"{m}_valid" for m in cfg.model.names}
  return {k: v for k, v in batch.items() if k in keep}


def pretraining_loss(model, params, batch, rng, config, mesh=None):
  """(weighted loss, metrics) of every objective the config weights > 0, on `batch`, as one
  compiled program."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmjax import objectives  # pylint: disable=import-outside-toplevel
  from mmjax.config_lib import parse  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  weights = parse(config).objectives
  # Numeric arrays are traced; anything else (strings, paths) stays a Python constant.
  def numeric(v):  # a dtype's truth value is its field count, so no `or` here
    dtype = v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
    return np.dtype(dtype).kind in "biuf"
  traced = {k: v for k, v in batch.items() if numeric(v)}
  rest = {k: v for k, v in batch.items() if k not in traced}
  return jax.jit(lambda p, b, r: objectives.pretraining_loss(model, p, {**b, **rest}, r,
                                                             weights, mesh))(params, traced, rng)


def train(config, workdir: str, **kwargs):
  """Train (or resume) in `workdir`, as train.py does; see mmjax.trainer.train."""
  from mmjax import trainer  # pylint: disable=import-outside-toplevel
  return trainer.train(config, workdir, **kwargs)
