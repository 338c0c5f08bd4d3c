"""Restore a checkpoint onto the devices at hand and run the config's evaluators.

Any mesh trained it, any process count: parameters are restored straight into this
machine's shardings (mesh data=-1 over the local devices unless --config overrides it).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import numpy as np

from mmjax import checkpoint as ckpt_lib
from mmjax import config_lib, models, sharding, train_lib
from mmjax.data import builtin, pipeline, text as text_lib
from mmjax.evaluators import itm, masked, retrieval, zero_shot
from mmjax.evaluators.common import Evaluated

EVALUATORS = ("zero_shot", "retrieval", "itm", "mlm", "mim")


def restore(workdir: Optional[str] = None, checkpoint: Optional[str] = None, overrides=None,
            devices=None):
  """(config, model, params, mesh, step) restored onto `devices` (default: all present);
  config is the typed Config of the checkpoint's config (+ overrides)."""
  ckpt, step = ckpt_lib.find_checkpoint(workdir, checkpoint)
  raw = ckpt.restore_config(step)
  raw.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  if overrides:
    raw.update_from_flattened_dict(overrides)
  config = config_lib.parse(raw)
  model = models.build_model(config.model)
  tx, _ = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(dataclasses.asdict(config.mesh), devices)
  target, _ = train_lib.abstract_state(model, tx, mesh)
  state = ckpt.restore(step, target)
  ckpt.close()
  return config, model, state.params, mesh, step


def _test_batches(config, batch_size: int, num_examples: int, n_dev: int):
  """The first num_examples test examples (rounded down to a multiple of the device count),
  in batches whose size divides over the devices: the same examples on any mesh. Every
  process reads the whole set (evaluation sets are small); arrays are placed globally."""
  num_examples -= num_examples % n_dev
  ds = pipeline.make_dataset(config.data, "test", global_batch_size=n_dev, seed=config.seed,
                             shuffle=False, repeat=False)
  rows, seen = [], 0
  for batch in ds:
    rows.append({k: np.asarray(v) for k, v in batch.items()})
    seen += n_dev
    if seen >= num_examples:
      break
  data = {k: np.concatenate([r[k] for r in rows])[:num_examples] for k in rows[0]}
  step = max(n_dev, batch_size - batch_size % n_dev)
  return [{k: v[i:i + step] for k, v in data.items()} for i in range(0, len(data["label"]), step)]


def class_prompts(config) -> np.ndarray:
  """[C, T, L] token ids of every class name in every template."""
  task = config.data.task
  tok = text_lib.get_tokenizer(config.data.tokenizer)
  length = config.data.text_len
  names, templates = builtin.class_names(task), builtin.prompt_templates(task)
  return np.stack([np.stack([tok.encode(t.format(n), length) for t in templates])
                   for n in names])


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
  # Prompts and hard-negative captions are text: they need the second modality to be text.
  texts = config.model.modality(ev.b).kind == "text"
  for name in ("zero_shot", "itm"):
    if name in names and not texts:
      results[f"{name}/skipped"] = f"needs a text modality second; the model pairs {ev.a}/{ev.b}"
  if "zero_shot" in names and texts and config.data.source == "builtin":
    results.update(zero_shot.evaluate(ev, batches, class_prompts(config)))
  if "retrieval" in names:
    results.update(retrieval.evaluate(ev, batches))
  if "itm" in names and texts and "neg_text" in batches[0]:
    results.update(itm.evaluate(ev, batches))
  if "mlm" in names or "mim" in names:
    results.update(masked.evaluate(ev, batches))
  return results


def format_table(results: Dict[str, Any]) -> str:
  rows = []
  for k, v in results.items():
    if isinstance(v, float):
      v = f"{v:.4f}"
    rows.append((k, str(v)))
  w = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def write_results(results: Dict[str, Any], out_dir: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  return path
