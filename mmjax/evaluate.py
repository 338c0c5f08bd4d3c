"""Restore a checkpoint onto the devices at hand and run the config's evaluators.

Any mesh trained it, any process count: parameters are restored straight into this
machine's shardings (mmjax.restore: mesh data=-1 over the local devices unless --config
overrides it). The evaluators are the registered ones (mmjax.evaluators) that eval.evaluators
(or `evaluators`) names, run in that order; one that does not apply to the model or data is
reported as '<name>/skipped' with its reason.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from mmjax import evaluators as evaluators_lib
from mmjax.evaluators.zero_shot import (NAMES_HINT, check_labels, class_prompts,  # noqa: F401
                                        zero_shot_classes)
from mmjax.restore import apply_overrides, restore  # noqa: F401  (this module's API too)


def run(workdir: Optional[str] = None, checkpoint: Optional[str] = None,
        evaluators=None, overrides=None, devices=None) -> Dict[str, Any]:
  """Results of the evaluators (default: the checkpoint config's eval.evaluators) on the
  checkpoint of `workdir` (its latest) or `checkpoint`: {'step', 'fusion', 'devices',
  '<name>/<metric>': value, '<name>/skipped': why}."""
  config, model, params, mesh, step = restore(workdir, checkpoint, overrides, devices)
  selected = evaluators_lib.resolve(tuple(evaluators or config.eval.evaluators))
  ctx = evaluators_lib.EvalContext(config, model, params, mesh, step)
  results: Dict[str, Any] = {"step": step, "fusion": config.model.fusion.name,
                             "devices": mesh.size}
  results.update(evaluators_lib.run_all(ctx, selected))
  return results


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
