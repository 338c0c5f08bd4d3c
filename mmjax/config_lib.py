"""Config checks that run before anything compiles: one line naming the problem and the fix.

Unknown keys given on the command line are rejected by ml_collections itself
(`--config.modle.width=...` fails); this module checks the values and their combinations.
"""
from __future__ import annotations

from mmjax import fusion as fusion_lib
from mmjax import models, objectives

REQUIRED = ("seed", "total_steps", "batch_size", "model", "attention", "loss_weights",
            "objectives", "optimizer", "mesh", "checkpoint", "data")


class ConfigError(ValueError):
  """A bad config value or combination (the message is one line)."""


def validate(config, num_devices: int = 1) -> None:
  missing = [k for k in REQUIRED if k not in config]
  if missing:
    raise ConfigError(f"config lacks {missing}; start from configs/default.py")
  mc = config.model
  mods = tuple(mc.modalities.keys())
  try:
    fusion_lib.validate(models.fusion_config(mc), mods)
    models.block_config(mc, config.attention)
    objectives.check_objectives(mc.fusion, dict(config.loss_weights),
                                has_towers=_has_towers(mc.depth.unimodal))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if mc.fusion == "early_sum" and mc.get("early_sum_align", "none") == "none":
    lengths = _token_counts(config)
    if len(set(lengths.values())) > 1:
      raise ConfigError(
          f"early_sum needs aligned tokens of equal length, got {lengths}; use time-aligned "
          "inputs or set model.early_sum_align='pad'")
  if config.batch_size <= 0 or config.total_steps <= 0:
    raise ConfigError("batch_size and total_steps must be positive")
  accum = config.get("grad_accum_steps", 1)
  if config.batch_size % accum:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by "
                      f"grad_accum_steps={accum}")
  if config.get("nan_policy", "stop") not in ("stop", "skip"):
    raise ConfigError(f"unknown nan_policy {config.nan_policy!r}; use 'stop' or 'skip'")
  from mmjax import sharding  # pylint: disable=import-outside-toplevel
  try:
    d, f, _ = sharding.mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if (config.batch_size // accum) % (d * f):
    raise ConfigError(f"batch_size={config.batch_size} (per micro-batch "
                      f"{config.batch_size // accum}) is not divisible by the {d * f} batch "
                      "shards (mesh.data x mesh.fsdp); change batch_size or the mesh")


def _has_towers(depth) -> bool:
  return all(int(v) > 0 for v in depth.values()) if hasattr(depth, "values") else int(depth) > 0


def _token_counts(config):
  import jax  # pylint: disable=import-outside-toplevel
  model = models.build_model(config)
  batch = models.dummy_batch(config, 1)
  shapes = jax.eval_shape(
      lambda b: model.init_with_output(jax.random.key(0), b, method=model.embed)[0], batch)
  return {m: int(t[0].shape[1]) for m, t in shapes.items()}
