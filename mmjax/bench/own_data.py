"""Own labelled data: configs/default.py against configs/own_data.py on real digits, one change
at a time.

  python -m mmjax.bench.own_data [--data=runs/digits] [--workdir=runs/own_data]
      [--steps=200] [--variants=default,contrastive_only,...] [--seeds=0,1,2] [--out=FILE.md]
      [--table_only]

Prepares scikit-learn's handwritten digits (mmjax.data.examples: 1,347 train / 450 test real
8x8 scans upsampled to 32x32, templated captions, labels) once, then trains each variant for
the same --steps at batch 64 on one device and scores it on the test split:

  zero_shot    mmjax's zero-shot evaluator: the test images against the 10 class names in the
               5 caption templates (class embedding = mean over templates), top-1
  probe_emb    logistic regression on the frozen, normalized image embeddings the zero-shot
               uses (fit on the train split, scored on the test split)
  probe_pix    the same logistic regression on the raw input pixels (one number per data set:
               the bar a linear classifier sets)

A variant is configs/default.py pointed at the digits with one change (VARIANTS), or the
recipe configs/own_data.py. Finished runs are cached in
--workdir/<variant>/seed<s>/result.json (rerun with --force to retrain; --table_only
tabulates the cache and trains nothing). Prints one table (markdown) at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

CLASS_FILE, TEMPLATE_FILE = "class_names.txt", "prompt_templates.txt"


# ------------------------------------------------------------------------------ variants

def default_on(data_dir: str):
  """configs/default.py with its data pointed at a prepared JSONL folder (nothing else)."""
  from mmjax.configs import default  # pylint: disable=import-outside-toplevel
  c = default.get_config()
  c.data.update({"source": "jsonl", "jsonl_path": os.path.join(data_dir, "train.jsonl"),
                 "jsonl_eval_path": os.path.join(data_dir, "test.jsonl"),
                 "class_names": os.path.join(data_dir, CLASS_FILE),
                 "prompt_templates": os.path.join(data_dir, TEMPLATE_FILE)})
  return c


def _set(**kv) -> Callable:
  """A variant that sets dotted keys on the config ('loss_weights.itm': 0.0)."""
  def apply(c):
    for key, value in kv.items():
      node, *path = c, *key.split(".")
      for p in path[:-1]:
        node = node[p]
      node[path[-1]] = value
    return c
  return apply


def _resolution(size: int, patch: int):
  def apply(c):
    c.data.image_size = size
    c.model.modalities.image.patch = patch
    c.model.modalities.image.grid = (size // patch, size // patch)
    c.model.modalities.image.input_shape = (size, size, 3)
    return c
  return apply


def _contrastive_only(c):
  c.loss_weights.update({"mlm": 0.0, "mim": 0.0, "itm": 0.0})
  return c


def _recipe(data_dir: str):
  from mmjax.configs import own_data  # pylint: disable=import-outside-toplevel
  return own_data.get_config(data_dir)


def _augmented(c):
  """The train manifest with 4 shifted / rotated copies per image (prepared beside DIR as
  DIR_aug4 by mmjax.data.examples --augment 4)."""
  c.data.jsonl_path = augmented_dir(os.path.dirname(c.data.jsonl_path), 4) + "/train.jsonl"
  return c


def augmented_dir(data_dir: str, copies: int) -> str:
  return f"{data_dir.rstrip('/')}_aug{copies}"


# name -> (base, what changes from the base, how). Bases: 'default' = configs/default.py on the
# digits; 'contrastive_only' = its row below; 'own_data' = configs/own_data.py.
VARIANTS: Dict[str, Tuple[str, str, Callable]] = {
    # the objective mix, from configs/default.py
    "default": ("default", "(configs/default.py as shipped)", lambda c: c),
    "no_itm": ("default", "loss_weights.itm = 0", _set(**{"loss_weights.itm": 0.0})),
    "default_multi_positive": ("default", "objectives.multi_positive = 'label'",
                               _set(**{"objectives.multi_positive": "label"})),
    "contrastive_only": ("default", "loss_weights.mlm = mim = itm = 0", _contrastive_only),
    "contrastive_mlm": ("contrastive_only", "loss_weights.mlm = 0.5",
                        _set(**{"loss_weights.mlm": 0.5})),
    "contrastive_mim": ("contrastive_only", "loss_weights.mim = 0.5",
                        _set(**{"loss_weights.mim": 0.5})),
    # one change at a time from contrastive_only
    "multi_positive_text": ("contrastive_only", "objectives.multi_positive = 'text'",
                            _set(**{"objectives.multi_positive": "text"})),
    "multi_positive_label": ("contrastive_only", "objectives.multi_positive = 'label'",
                             _set(**{"objectives.multi_positive": "label"})),
    "temperature_0.03": ("contrastive_only", "objectives.temperature = 0.03 (fixed)",
                         _set(**{"objectives.temperature": 0.03})),
    "temperature_0.01": ("contrastive_only", "objectives.temperature = 0.01 (fixed)",
                         _set(**{"objectives.temperature": 0.01})),
    "width_64": ("contrastive_only", "model.width = 64, mlp_dim = 256",
                 _set(**{"model.width": 64, "model.mlp_dim": 256})),
    "width_256": ("contrastive_only", "model.width = 256, mlp_dim = 1024",
                  _set(**{"model.width": 256, "model.mlp_dim": 1024})),
    "depth_4": ("contrastive_only", "model.depth.unimodal = 4",
                _set(**{"model.depth.unimodal": 4})),
    "res16_patch4": ("contrastive_only", "16x16 input, patch 4 (16 tokens)", _resolution(16, 4)),
    "res32_patch8": ("contrastive_only", "patch 8 (16 tokens)", _resolution(32, 8)),
    "res16_patch2": ("contrastive_only", "16x16 input, patch 2 (64 tokens)", _resolution(16, 2)),
    "text_len_48": ("contrastive_only", "data.text_len = text max_len = 48 (no caption cut)",
                    _set(**{"data.text_len": 48, "model.modalities.text.max_len": 48})),
    "lr_3e-3": ("contrastive_only", "optimizer.learning_rate = 3e-3",
                _set(**{"optimizer.learning_rate": 3e-3})),
    "lr_3e-4": ("contrastive_only", "optimizer.learning_rate = 3e-4",
                _set(**{"optimizer.learning_rate": 3e-4})),
    "warmup_10": ("contrastive_only", "optimizer.warmup_steps = 10",
                  _set(**{"optimizer.warmup_steps": 10})),
    "augment_4": ("contrastive_only", "4 augmented copies of each train image", _augmented),
    # the recipe, and the recipe with one of its changes undone (or one more added)
    "own_data": ("own_data", "(configs/own_data.py)", lambda c: c),
    "own_data_no_multi_positive": ("own_data", "objectives.multi_positive = 'none'",
                                   _set(**{"objectives.multi_positive": "none"})),
    "own_data_text_len_32": ("own_data", "data.text_len = text max_len = 32",
                             _set(**{"data.text_len": 32, "model.modalities.text.max_len": 32})),
    "own_data_patch_4": ("own_data", "patch 4 (64 tokens)", _resolution(32, 4)),
    "own_data_learned_temperature": ("own_data", "objectives.temperature = 0 (learned, "
                                     "from 1/0.07)", _set(**{"objectives.temperature": 0.0})),
    "own_data_augment_4": ("own_data", "4 augmented copies of each train image", _augmented),
    "own_data_patch_dropout_0.5": ("own_data", "model.patch_dropout = 0.5 (8 of 16 tokens)",
                                   _set(**{"model.patch_dropout": 0.5})),
    "own_data_patch_4_patch_dropout_0.5": ("own_data_patch_4", "model.patch_dropout = 0.5 (32 "
                                           "of 64 tokens)", _set(**{"model.patch_dropout": 0.5})),
    "own_data_itm": ("own_data", "hier_multi_to_one, joint depth 2, loss_weights.itm = 1",
                     _set(**{"model.fusion": "hier_multi_to_one", "model.depth.joint": 2,
                             "loss_weights.itm": 1.0})),
}


def _base(name: str, data_dir: str):
  if name == "own_data":
    return _recipe(data_dir)
  if name == "default":
    return default_on(data_dir)
  base, _, fn = VARIANTS[name]
  return fn(_base(base, data_dir))


def variant_config(name: str, data_dir: str, steps: int, seed: int):
  """The ConfigDict a variant trains: its change, then the shared budget and bookkeeping."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
  c = _base(name, data_dir)
  c.total_steps = steps
  c.seed = seed
  c.log_every_steps = max(steps // 6, 1)
  c.checkpoint.every_steps = steps  # only the final state
  c.checkpoint.keep = 1
  c.checkpoint.async_save = False
  return c


# ------------------------------------------------------------------------------ evaluation

def split_arrays(data_cfg, split: str, modality: str) -> Tuple[np.ndarray, np.ndarray]:
  """(inputs [N, ...], labels [N]) of a whole split, in manifest order, preprocessed."""
  from mmjax.data import pipeline  # pylint: disable=import-outside-toplevel
  src = pipeline.make_source(data_cfg, split)
  rows = [src[i] for i in range(len(src))]
  return (np.stack([r[modality] for r in rows]),
          np.asarray([int(r["label"]) for r in rows]))


def linear_probe(x_train, y_train, x_test, y_test) -> float:
  """Test top-1 of a standardized multinomial logistic regression (sklearn, L2, C=1)."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
  clf.fit(x_train.reshape(len(x_train), -1), y_train)
  return float(clf.score(x_test.reshape(len(x_test), -1), y_test))


def image_embeddings(ev, images: np.ndarray, batch: int = 150) -> np.ndarray:
  """Normalized contrastive embeddings of the first modality, [N, E]."""
  from mmjax.evaluators.common import pad_rows  # pylint: disable=import-outside-toplevel
  out = []
  for i in range(0, len(images), batch):
    chunk = images[i:i + batch]
    padded = pad_rows(chunk, ev.mesh.size)
    out.append(ev.embeddings(ev.encode({ev.a: padded}))[ev.a][:len(chunk)])
  return np.concatenate(out)


def evaluate_params(cfg, model, params, mesh, data_dir: str) -> Dict[str, Any]:
  """Zero-shot (mmjax's evaluator, data.class_names x data.prompt_templates) and the linear
  probes, on the test split. The probes fit on the un-augmented train split of data_dir."""
  from mmjax import restore, sharding  # pylint: disable=import-outside-toplevel
  from mmjax.evaluators import zero_shot  # pylint: disable=import-outside-toplevel
  from mmjax.evaluators.common import Evaluated  # pylint: disable=import-outside-toplevel
  ev = Evaluated(cfg, model, params, mesh, sharding.batch_sharding(mesh))
  batches = restore.eval_batches(cfg, cfg.eval.batch_size, 10**9, mesh.size)
  res = zero_shot.evaluate(ev, batches, zero_shot.class_prompts(cfg))
  data = cfg.data.copy_and_resolve_references()
  data.jsonl_path = os.path.join(data_dir, "train.jsonl")
  x_tr, y_tr = split_arrays(data, "train", ev.a)
  x_te, y_te = split_arrays(data, "test", ev.a)
  res["probe_emb"] = linear_probe(image_embeddings(ev, x_tr), y_tr,
                                  image_embeddings(ev, x_te), y_te)
  cache = os.path.join(data_dir, f"probe_pixels_{cfg.data.image_size}.json")
  if os.path.exists(cache):
    with open(cache, encoding="utf-8") as f:
      res["probe_pix"] = json.load(f)["probe_pix"]
  else:
    res["probe_pix"] = linear_probe(x_tr, y_tr, x_te, y_te)
    with open(cache, "w", encoding="utf-8") as f:
      json.dump({"probe_pix": res["probe_pix"]}, f)
  return res


def cached(workdir: str, steps: int, seed: int):
  """The result.json of a finished variant run at these steps and seed, else None."""
  path = os.path.join(workdir, "result.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    res = json.load(f)
  return res if res.get("steps") == steps and res.get("seed") == seed else None


def run_variant(name: str, data_dir: str, workdir: str, steps: int, seed: int, force: bool,
                log=print) -> Dict[str, Any]:
  """Train one variant (cached in workdir/result.json) and evaluate it."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmjax import configure, models, sharding, trainer  # pylint: disable=import-outside-toplevel
  cache = os.path.join(workdir, "result.json")
  res = None if force else cached(workdir, steps, seed)
  if res:
    return res
  if os.path.isdir(workdir):
    shutil.rmtree(workdir)
  config = variant_config(name, data_dir, steps, seed)
  cfg = configure.resolve(config)
  devices = jax.devices()[:1]
  t0 = time.perf_counter()
  out = trainer.train(cfg, workdir, log_to_stdout=False, devices=devices)
  train_s = time.perf_counter() - t0
  model = models.build_model(cfg)
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh), devices)
  res = evaluate_params(cfg, model, out["state"].params, mesh, data_dir)
  m = out["metrics"]
  res.update(variant=name, steps=steps, seed=seed, train_s=train_s,
             final_loss=m.get("loss"), logit_scale=m.get("contrastive/logit_scale"),
             params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(out["state"].params))),
             change=describe(name))
  os.makedirs(workdir, exist_ok=True)
  with open(cache, "w", encoding="utf-8") as f:
    json.dump(res, f, indent=1)
  log(f"{name}: zero-shot {res['zero_shot/accuracy']:.3f}, probe {res['probe_emb']:.3f}, "
      f"{train_s:.0f}s")
  return res


def describe(name: str) -> str:
  base, change, _ = VARIANTS[name]
  return change if name == base else f"{base} + {change}"


def _spread(values) -> str:
  """'93.1%' for one value, else 'mean (min-max)' in percent."""
  v = [100 * x for x in values]
  if len(v) == 1:
    return f"{v[0]:.1f}%"
  return f"{np.mean(v):.1f}% ({min(v):.1f}-{max(v):.1f})"


def table(results: Dict[str, List[Dict[str, Any]]]) -> str:
  """Markdown: one row per variant, means (and ranges) over its seeds."""
  rows = ["| variant | change | seeds | zero-shot top-1 | probe (embeddings) | "
          "probe (raw pixels) | logit scale |",
          "|---|---|---:|---:|---:|---:|---:|"]
  for name, runs in results.items():
    scales = [r["logit_scale"] for r in runs if r.get("logit_scale") is not None]
    scale = f"{np.mean(scales):.1f}" if scales else ""
    rows.append(
        f"| {name} | {describe(name)} | {len(runs)} | "
        f"{_spread([r['zero_shot/accuracy'] for r in runs])} | "
        f"{_spread([r['probe_emb'] for r in runs])} | {100 * runs[0]['probe_pix']:.1f}% | "
        f"{scale} |")
  return "\n".join(rows)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m mmjax.bench.own_data", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default="runs/digits", help="prepared digits folder")
  p.add_argument("--workdir", default="runs/own_data", help="<variant>/seed<s> sub-folders")
  p.add_argument("--steps", type=int, default=200, help="train steps of every variant")
  p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds per variant")
  p.add_argument("--force", action="store_true", help="retrain cached variants")
  p.add_argument("--out", default="", help="also write the table to this file")
  p.add_argument("--table_only", action="store_true",
                 help="train nothing: tabulate the seeds already in --workdir")
  a = p.parse_args(argv)
  from mmjax.data import examples  # pylint: disable=import-outside-toplevel
  names = [v for v in a.variants.split(",") if v]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    print(f"error: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}",
          file=sys.stderr)
    return 1
  seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
  if not os.path.exists(os.path.join(a.data, "train.jsonl")):
    examples.prepare_digits(a.data)
  aug = augmented_dir(a.data, 4)
  if any(n.endswith("augment_4") for n in names) and not os.path.exists(
      os.path.join(aug, "train.jsonl")):
    examples.prepare_digits(aug, augment_copies=4)
  results = {}
  for name in names:
    if a.table_only:
      runs = [cached(os.path.join(a.workdir, name, f"seed{s}"), a.steps, s) for s in seeds]
      if any(runs):
        results[name] = [r for r in runs if r]
      continue
    results[name] = [run_variant(name, a.data, os.path.join(a.workdir, name, f"seed{s}"),
                                 a.steps, s, a.force) for s in seeds]
  text = table(results)
  print(f"\n{a.steps} steps at batch 64 on 1 device, seeds {a.seeds}; zero-shot chance 10%\n")
  print(text)
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # before jax is imported (docs/process_settings.md)
  sys.exit(main())
