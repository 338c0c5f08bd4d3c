"""Restore a checkpoint onto the devices at hand and run the config's evaluators.

Any mesh trained it, any process count: parameters are restored straight into this
machine's shardings (mesh data=-1 over the local devices unless --config overrides it).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from mmjax import checkpoint as ckpt_lib
from mmjax import cli, config_lib, models, sharding, train_lib
from mmjax.data import builtin, pipeline, prompts, sources, text as text_lib
from mmjax.evaluators import captioning, itm, linear_probe, masked, ordering, retrieval, zero_shot
from mmjax.evaluators.common import Evaluated

EVALUATORS = ("zero_shot", "retrieval", "itm", "mlm", "mim", "linear_probe", "caption",
              "frame_order")


def restore(workdir: Optional[str] = None, checkpoint: Optional[str] = None, overrides=None,
            devices=None):
  """(config, model, params, mesh, step) restored onto `devices` (default: all present);
  config is the typed Config of the checkpoint's config with `overrides` (a flat dict
  {'data.source': 'jsonl', ...}; string values take the type of the key, see apply_overrides)."""
  ckpt, step = ckpt_lib.find_checkpoint(workdir, checkpoint)
  raw = ckpt.restore_config(step)
  raw.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  if overrides:
    apply_overrides(raw, overrides)
  config = config_lib.parse(raw)
  model = models.build_model(config.model)
  tx, _ = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(dataclasses.asdict(config.mesh), devices)
  target, _ = train_lib.abstract_state(model, tx, mesh)
  state = ckpt.restore(step, target)
  ckpt.close()
  return config, model, state.params, mesh, step


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


def _batches(config, split: str, batch_size: int, num_examples: int, n_dev: int):
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


def _test_batches(config, batch_size: int, num_examples: int, n_dev: int):
  return _batches(config, "test", batch_size, num_examples, n_dev)


NAMES_HINT = ("set data.class_names (a list, a text file with one name per line, or "
              "'cat,dog,...'; on eval.py: --config.data.class_names=...)")


def zero_shot_classes(data_cfg) -> Tuple[Optional[Tuple[str, ...]], Tuple[str, ...], str]:
  """(names, templates, why): data.class_names, else the source's own names (built-in task,
  TFDS ClassLabel); data.prompt_templates, else the built-in task's, else openai_imagenet.
  names is None when there are none; `why` then says which key to set."""
  names = prompts.parse_class_names(data_cfg.class_names)
  if names is None:
    names = sources.source_class_names(data_cfg)
  templates = prompts.parse_templates(data_cfg.prompt_templates)
  if templates is None:
    templates = (tuple(builtin.prompt_templates(data_cfg.task)) if data_cfg.source == "builtin"
                 else prompts.TEMPLATE_SETS[prompts.DEFAULT_TEMPLATES])
  why = ""
  if names is None:
    what = (f"the TFDS label feature {data_cfg.feature_keys.get('label', 'label')!r} is not a "
            "ClassLabel with names" if data_cfg.source == "tfds" else
            "the shards' folder has no classes.txt" if data_cfg.source in ("wds", "array_record")
            else "a JSONL manifest has no class names" if data_cfg.source == "jsonl"
            else f"a {data_cfg.source} source has no class names")
    why = f"{what}; {NAMES_HINT}"
  return names, templates, why


def class_prompts(config, names=None, templates=None) -> np.ndarray:
  """[C, T, L] token ids (config.data.tokenizer, length data.text_len) of every class name in
  every template; names / templates default to zero_shot_classes(config.data)."""
  if names is None or templates is None:
    default_names, default_templates, why = zero_shot_classes(config.data)
    names = default_names if names is None else names
    templates = default_templates if templates is None else templates
    if names is None:
      raise ValueError(f"no class names for zero-shot: {why}")
  tok = text_lib.from_config(config.data)
  length = config.data.text_len
  return np.stack([np.stack([tok.encode(p, length) for p in row])
                   for row in prompts.prompts(names, templates)])


def check_labels(batches, num_classes: int, what: str, split: str = "test") -> None:
  """Every label in [0, num_classes), else a one-line ValueError naming the fix."""
  labels = np.concatenate([b["label"] for b in batches])
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"{split} label {int(bad[0])} is out of range of the {num_classes} "
                     f"{what}; give one name per label 0..{int(labels.max())} "
                     "(data.class_names) or fix the labels")


def run(workdir: Optional[str] = None, checkpoint: Optional[str] = None,
        evaluators=None, overrides=None, devices=None) -> Dict[str, Any]:
  config, model, params, mesh, step = restore(workdir, checkpoint, overrides, devices)
  ev = Evaluated(config, model, params, mesh, sharding.batch_sharding(mesh))
  names = tuple(evaluators or config.eval.evaluators)
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"unknown evaluator(s) {unknown}; choose from {', '.join(EVALUATORS)}")
  batches = _test_batches(config, config.eval.batch_size, config.eval.num_examples, mesh.size)
  results: Dict[str, Any] = {"step": step, "fusion": config.model.fusion.name,
                             "devices": mesh.size}
  labelled = "label" in batches[0]
  # Prompts and hard-negative captions are text: they need the second modality to be text.
  texts = config.model.modality(ev.b).kind == "text"
  for name in ("zero_shot", "itm"):
    if name in names and not texts:
      results[f"{name}/skipped"] = f"needs a text modality second; the model pairs {ev.a}/{ev.b}"
  if "zero_shot" in names and texts:
    classes, templates, why = zero_shot_classes(config.data)
    if not labelled:
      results["zero_shot/skipped"] = "the test split has no labels"
    elif classes is None:
      results["zero_shot/skipped"] = why
    else:
      check_labels(batches, len(classes), "class names")
      results.update(zero_shot.evaluate(ev, batches, class_prompts(config, classes, templates)))
  if "linear_probe" in names:
    results.update(_linear_probe(config, ev, batches, labelled, mesh.size))
  if "retrieval" in names:
    results.update(retrieval.evaluate(ev, batches))
  if "itm" in names and texts and "neg_text" in batches[0]:
    results.update(itm.evaluate(ev, batches))
  if "mlm" in names or "mim" in names:
    results.update(masked.evaluate(ev, batches))
  if "caption" in names:
    results.update(_captioning(config, model, params, mesh, ev, batches))
  if "frame_order" in names:
    results.update(ordering.evaluate(ev, batches, config.objectives.frame_order_ratio,
                                     config.seed))
  return results


def _captioning(config, model, params, mesh, ev, batches) -> Dict[str, Any]:
  heads = config.model.objective_heads
  if "caption" not in heads and "prefix_lm" not in heads:
    return {"caption/skipped": "the model has no captioning decoder or prefix-LM head "
                               "(loss_weights.caption / prefix_lm)"}
  from mmjax import generate  # pylint: disable=import-outside-toplevel
  gen = generate.for_config(config, model, params, mesh)
  e = config.eval
  return captioning.evaluate(ev, batches, gen, text_lib.from_config(config.data),
                             max_len=e.caption_max_len or config.data.text_len,
                             beam=e.caption_beam, alpha=e.caption_alpha, seed=config.seed)


def _linear_probe(config, ev, test_batches, labelled: bool, n_dev: int) -> Dict[str, Any]:
  kinds = {m: config.model.modality(m).kind for m in ev.model.modalities}
  modality = next((m for m in ev.model.modalities if kinds[m] != "text"), None)
  if modality is None:
    return {"linear_probe/skipped": "needs a non-text modality to embed"}
  if not labelled:
    return {"linear_probe/skipped": "the test split has no labels"}
  e = config.eval
  train = _batches(config, "train", e.batch_size, e.probe_train_examples, n_dev)
  if "label" not in train[0]:
    return {"linear_probe/skipped": "the train split has no labels"}
  return linear_probe.evaluate(ev, modality, train, test_batches, l2_grid=e.probe_l2,
                               holdout=e.probe_holdout, seed=config.seed)


def format_table(results: Dict[str, Any]) -> str:
  rows = []
  for k, v in results.items():
    if isinstance(v, float):
      v = f"{v:.4f}"
    if isinstance(v, (list, tuple)):  # caption samples: one per line
      v = "\n".join([""] + [f"    {x}" for x in v])
    rows.append((k, str(v)))
  w = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def write_results(results: Dict[str, Any], out_dir: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  return path
