"""What evaluation reads: a checkpoint restored onto the devices at hand, and its eval splits.

Any mesh trained it, any process count: parameters are restored straight into this
machine's shardings (mesh data=-1 over the local devices unless `overrides` change it).
Used by mmjax.evaluate (eval.py), mmjax.generate (generate.py) and the benchmarks.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from mmjax import checkpoint as ckpt_lib
from mmjax import cli, config_lib, configure, models, sharding, train_lib
from mmjax.data import pipeline


def restore(workdir: Optional[str] = None, checkpoint: Optional[str] = None, overrides=None,
            devices=None):
  """(config, model, params, mesh, step) restored onto `devices` (default: all present);
  config is the typed Config of the checkpoint's config with `overrides` (a flat dict
  {'data.source': 'jsonl', ...}; string values take the type of the key, see apply_overrides).
  A workdir's latest step that a live run deletes while it is read (its keep policy) is
  retried on the new latest step: a reader of a live run only ever sees committed steps."""
  (config,), model, params, mesh, step = restore_sets(workdir, checkpoint, overrides, ({},),
                                                      devices)
  return config, model, params, mesh, step


def restore_sets(workdir: Optional[str] = None, checkpoint: Optional[str] = None,
                 overrides=None, sets: Sequence[Dict[str, Any]] = ({},), devices=None,
                 names: Optional[Sequence[str]] = None):
  """(configs, model, params, mesh, step): the checkpoint's params restored once onto
  `devices`, and one typed Config per entry of `sets` (the checkpoint's config with
  `overrides`, then that entry's flat overrides: an evaluation set's data and eval keys).
  Every config must build the same model, the one the params are restored for; a set's
  error starts with its name (names[i]). A live run's deleted step is retried (restore)."""
  names = list(names) if names is not None else [None] * len(sets)
  for attempt in range(5):
    try:
      return _restore_once(workdir, checkpoint, overrides, sets, names, devices)
    except ckpt_lib.CheckpointError as e:
      if checkpoint or attempt == 4 or not _moved_on(workdir, e):
        raise
  raise AssertionError("unreachable")


def _moved_on(workdir: str, error: Exception) -> bool:
  """The failed read was of a step the writer deleted, or a newer step was committed since."""
  if isinstance(error, ckpt_lib.StepVanished):
    return True
  ckpt, latest = ckpt_lib.find_checkpoint(workdir, None)
  ckpt.close()
  return f"step {latest} " not in str(error)


def _restore_once(workdir, checkpoint, overrides, sets, names, devices):
  ckpt, step = ckpt_lib.find_checkpoint(workdir, checkpoint)
  raw = ckpt.restore_config(step)
  raw.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  if overrides:
    apply_overrides(raw, overrides)
  configs = [_set_config(raw, over, name) for over, name in zip(sets, names)]
  config = configs[0]
  for other, name in zip(configs[1:], names[1:]):
    _check_same_model(config, other, names[0], name)
  model = models.build_model(config.model)
  tx, _ = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(dataclasses.asdict(config.mesh), devices)
  target, _ = train_lib.abstract_state(model, tx, mesh)
  state = ckpt.restore(step, target)
  ckpt.close()
  return configs, model, train_lib.evaluated_params(config, state), mesh, step


def _set_config(raw, overrides, name):
  """The typed Config of `raw` with a set's `overrides` (raw itself is left as it is)."""
  try:
    cfg = copy.deepcopy(raw)
    if overrides:
      apply_overrides(cfg, overrides)
    return configure.resolve(cfg)
  except Exception as e:  # pylint: disable=broad-except
    if name is None or not cli.is_user_error(e):
      raise
    raise config_lib.ConfigError(f"set {name!r}: {cli.one_line(e)}") from None


def _check_same_model(first, other, first_name, name) -> None:
  """One-line ConfigError when set `name` builds another model than `first_name`."""
  if other.model == first.model:
    return
  diff = [f.name for f in dataclasses.fields(first.model)
          if getattr(first.model, f.name) != getattr(other.model, f.name)]
  raise config_lib.ConfigError(
      f"set {name!r} builds another model than set {first_name!r} (model."
      f"{diff[0] if diff else 'config'} differs); the checkpoint is restored once for all "
      "sets, so a set may change only data and eval keys that leave the model as it is "
      "(data.tokenizer and data.tokenizer_specials set the text ids): drop such keys from "
      "the set, or evaluate it on its own")


def trained_on_builtin(config) -> bool:
  """The model trained on the built-in generated set (data.source='builtin' and not imported
  by mmjax.convert, whose configs keep the default source): its images were normalized with
  the built-in scenes' pixel statistics, not data.image_mean / image_std."""
  return config.data.source == "builtin" and "converted_from" not in (config.source or {})


# Sections whose keys may be missing from a saved config: the typed defaults give their type.
_SECTIONS = {"eval": config_lib.EvalConfig, "optimizer": config_lib.OptimizerConfig,
             "mesh": config_lib.MeshConfig, "checkpoint": config_lib.CheckpointConfig,
             "objectives": config_lib.ObjectivesConfig}
# Keys whose string value the data layer reads itself (a file path, 'a,b,c', a set name).
_STRING_OR_LIST = ("data.class_names", "data.prompt_templates", "data.wds_shards",
                   "data.wds_eval_shards", "data.array_record_paths",
                   "data.array_record_eval_paths")
_MISSING = object()


def _default(path: Tuple[str, ...]):
  """The default value of a key a saved config may lack (`_MISSING` if no section knows it)."""
  from mmjax.data import config as data_config  # pylint: disable=import-outside-toplevel
  if path[0] == "data":
    node = data_config.get_config()
    for p in path[1:]:
      if not hasattr(node, "keys") or p not in node:
        return "" if path[1:2] == ("feature_keys",) and len(path) == 3 else _MISSING
      node = node[p]
    return node
  cls = _SECTIONS.get(path[0]) if len(path) == 2 else (config_lib.Config if len(path) == 1
                                                       else None)
  fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
  f = fields.get(path[-1])
  if f is None or f.default is dataclasses.MISSING or f.name in ("data", "source"):
    return _MISSING
  return f.default


def _known(section: Tuple[str, ...]) -> Tuple[str, ...]:
  """Keys a section may hold beyond those saved (its defaults)."""
  from mmjax.data import config as data_config  # pylint: disable=import-outside-toplevel
  if section == ("data",):
    return tuple(data_config.get_config().keys())
  cls = _SECTIONS.get(section[0]) if len(section) == 1 else None
  return tuple(f.name for f in dataclasses.fields(cls)) if cls else ()


def apply_overrides(raw, overrides) -> None:
  """Sets dotted keys on a saved config in place. A string value takes the type of the key's
  current value (or, for a key the saved config lacks, of its default): bool, int, float,
  tuple ('a,b' or '(1, 2)'), str. Unknown keys and bad values raise a one-line ConfigError."""
  for key, value in overrides.items():
    path = tuple(key.split("."))
    node = raw
    for i, p in enumerate(path[:-1]):
      if p not in node:
        if i == 0 and (p in _SECTIONS or p == "data"):
          node[p] = {}
        else:
          raise config_lib.ConfigError(f"unknown config key {key} ({'.'.join(path[:i + 1])} "
                                       "is not in the checkpoint's config); check its spelling")
      node = node[p]
      if not hasattr(node, "keys"):
        raise config_lib.ConfigError(f"unknown config key {key} ({'.'.join(path[:i + 1])} is "
                                     "a value, not a section); check its spelling")
    last = path[-1]
    like = node[last] if last in node else _default(path)
    if like is _MISSING:
      known = set(node.keys()) | set(_known(path[:-1]))
      close = difflib.get_close_matches(last, sorted(known), n=1)
      hint = f" (did you mean {'.'.join(path[:-1] + (close[0],))}?)" if close else ""
      raise config_lib.ConfigError(f"unknown config key {key}{hint}; check it against the "
                                   "checkpoint's saved config (CHECKPOINT/config)")
    if hasattr(like, "keys"):  # a section: replaced whole by a dict ("{'cls': ''}")
      value = cli.coerce(value, None, key) if isinstance(value, str) else value
      if not isinstance(value, dict):
        raise config_lib.ConfigError(f"config key {key} is a section; set one of its keys "
                                     f"(--config.{key}.KEY=VALUE) or give a dict")
    elif isinstance(value, str) and key not in _STRING_OR_LIST:
      try:
        value = cli.coerce(value, like, key)
      except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    with node.ignore_type():
      node[last] = value


def split_batches(config, split: str, batch_size: int, num_examples: int, n_dev: int):
  """The first num_examples examples of `split` (rounded down to a multiple of the device
  count; fewer when the split is smaller), in batches whose size divides over the devices:
  the same examples on any mesh. Every process reads them all (evaluation sets are small)."""
  num_examples -= num_examples % n_dev
  ds = pipeline.make_dataset(config.data, split, global_batch_size=n_dev, seed=config.seed,
                             shuffle=False, repeat=False)
  rows, seen = [], 0
  for batch in ds:
    rows.append({k: np.asarray(v) for k, v in batch.items()})
    seen += n_dev
    if seen >= num_examples:
      break
  data = {k: np.concatenate([r[k] for r in rows])[:num_examples] for k in rows[0]}
  n = len(data["index"])
  step = max(n_dev, batch_size - batch_size % n_dev)
  return [{k: v[i:i + step] for k, v in data.items()} for i in range(0, n, step)]


def eval_batches(config, batch_size: int, num_examples: int, n_dev: int):
  """split_batches of the test split, the one every evaluator scores (a name pytest does not
  collect when a test imports it)."""
  return split_batches(config, "test", batch_size, num_examples, n_dev)


def to_host(x) -> np.ndarray:
  """A (possibly multi-process) global array as numpy on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
