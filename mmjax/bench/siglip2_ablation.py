"""The SigLIP 2 ablation: SigLIP alone, + LocCa, + SILC / TIPS, at matched training FLOPs, on
the built-in scenes and on the digits example.

  python -m mmjax.bench.siglip2_ablation [--workdir=runs/siglip2_ablation] [--out=DIR]
      [--datasets=scenes,digits] [--reference_steps=400] [--budget_pflops=...]
      [--seeds=0,1,2] [--arms=siglip,locca,full] [--quick]

Three arms of configs/siglip2.py, the loss weights they leave out set to 0:
  siglip  loss_weights sigmoid only
  locca   sigmoid + locca
  full    sigmoid + locca + silc + tips, with objectives.starts (silc, tips) at 80% of the
          arm's own steps (the late phase adds the local crops and the EMA teacher)
Two datasets:
  scenes  the built-in image-text scenes with regions (data.regions: each object's box and
          caption, the pixel class map of the dense probe)
  digits  scikit-learn's handwritten digits, 16 px each at a random place on a 32 px black
          canvas, written once to <workdir>/digits_data (mmjax.data.examples digits --size=16
          --canvas=32 --regions): one region per image (the digit's ink box, "the digit
          seven"), zero-shot over the ten class names; no pixel map, so no dense probe

Matched compute: model FLOPs per train step (train_lib.flop_counts: XLA's count of 3 x the
lowered forward loss, plus the EMA teacher's forward where the phase distils from it), on the
arm's own data batch. The full arm has two phases, each counted; its steps T solve
  round(0.8 T) x FLOPs(early) + (T - round(0.8 T)) x FLOPs(late) = budget.
The budget (per dataset) is --budget_pflops, or the full arm's FLOPs at --reference_steps.

Each (dataset, arm, seed) trains in --workdir/<dataset>/<arm>/seed<s> and is then scored by
eval.py's evaluators (mmjax.evaluate): zero_shot, retrieval, referring, grounded_caption,
dense_probe. One that does not apply (no LocCa decoder, no pixel map) is reported as '—' with
its reason. A run whose final checkpoint and results.json exist is reused ('cached'), so the
ablation resumes over several invocations; an evaluator registered since is run on the cached
checkpoint.

Writes results.json (every run) and summary.md (per dataset and metric: the mean over seeds
and the seed range min-max, and for each pair of arms whether the ranges overlap) to --out
(default: the workdir).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.set_default_platforms()  # before jax: no TPU backend on hosts without TPUs
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import itertools
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import app, flags, logging

from mmjax import checkpoint as ckpt_lib
from mmjax import configure, evaluate, evaluators, objectives, sharding, train_lib, trainer
from mmjax.bench import records as records_lib
from mmjax.configs import siglip2
from mmjax.data import examples
from mmjax.perf import processor

ARMS = {  # arm -> its loss weights (the others of configs/siglip2.py set to 0)
    "siglip": ("sigmoid",),
    "locca": ("sigmoid", "locca"),
    "full": ("sigmoid", "locca", "silc", "tips"),
}
LATE = ("silc", "tips")   # the full arm's late-phase objectives
LATE_FRACTION = 0.8       # ... start at this fraction of its steps
DATASETS = ("scenes", "digits")
EVALUATORS = ("zero_shot", "retrieval", "referring", "grounded_caption", "dense_probe")
METRICS = (  # (results key, label); the evaluator is the key's prefix
    ("zero_shot/accuracy", "zero-shot accuracy"),
    ("retrieval/a2b_R@1", "image→text R@1"),
    ("retrieval/b2a_R@1", "text→image R@1"),
    ("referring/accuracy", "referring accuracy (IoU ≥ 0.5)"),
    ("referring/shuffled_accuracy", "referring accuracy against a shuffled truth (baseline)"),
    ("referring/other_region_accuracy", "referring: a hit on the image's other object (baseline)"),
    ("referring/mean_iou", "referring mean IoU"),
    ("grounded_caption/exact_match", "grounded caption exact match"),
    ("grounded_caption/cider", "grounded caption CIDEr-D"),
    ("grounded_caption/shuffled_cider", "grounded caption CIDEr-D against a shuffled truth "
     "(baseline)"),
    ("dense_probe/accuracy", "dense probe accuracy"),
    ("dense_probe/object_accuracy", "dense probe accuracy on object patches"),
    ("dense_probe/majority_object_accuracy", "dense probe majority baseline, object patches"),
)
QUICK_STEPS = 6
MATCHED = ("model FLOPs per train step, XLA's count (train_lib.flop_counts: 3 x the lowered "
           "forward loss + the EMA teacher's forward where a phase distils)")


# ------------------------------------------------------------------------------ configs

def digits_data(workdir: str, quick: bool = False) -> str:
  """The digits set for the ablation in <workdir>/digits_data (written once): 16 px digits
  (8 px with quick) at random places on a 32 px canvas (16), with regions."""
  out = os.path.join(workdir, "digits_data" + ("_quick" if quick else ""))
  size, canvas = (8, 16) if quick else (16, 32)
  meta = records_lib.read(os.path.join(out, "meta.json")) or {}
  if (meta.get("size"), meta.get("canvas"), meta.get("regions")) != (size, canvas, True):
    examples.prepare_digits(out, size=size, canvas=canvas, regions=True)
  return out


def dataset_config(dataset: str, data_dir: str = ""):
  """configs/siglip2.py on `dataset`: the scenes as shipped, or the digits manifest in
  data_dir (one region per image, zero-shot over its class names)."""
  c = siglip2.get_config()
  if dataset == "digits":
    c.data.update({"source": "jsonl", "jsonl_path": os.path.join(data_dir, "train.jsonl"),
                   "jsonl_eval_path": os.path.join(data_dir, "test.jsonl"),
                   "class_names": os.path.join(data_dir, "class_names.txt"),
                   "prompt_templates": os.path.join(data_dir, "prompt_templates.txt"),
                   "max_objects": 1})
    c.eval.num_examples = 450  # the whole test split
  elif dataset != "scenes":
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
  return c


def arm_config(arm: str, seed: int = 0, quick: bool = False, dataset: str = "scenes",
               data_dir: str = ""):
  """dataset_config with the arm's loss weights (the others 0) and objectives.starts only
  for the full arm (set by `with_steps`); `quick`: width 32, 1 layer, 16 px, batch 8."""
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
  c = dataset_config(dataset, data_dir)
  for k in list(c.loss_weights.keys()):
    c.loss_weights[k] = float(c.loss_weights[k]) if k in ARMS[arm] else 0.0
  c.objectives.starts = {}
  c.seed = seed
  c.log_every_steps = 10 ** 9  # the first and the last step only
  c.checkpoint.keep = 1
  c.checkpoint.async_save = False
  if quick:
    c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 2, 64, 32
    c.model.depth.unimodal = 1
    c.model.decoder_depth = 1
    c.model.prototypes = 32
    c.model.loc_bins = 16
    c.data.image_size = 16
    c.model.modalities.image.patch = 4
    c.model.modalities.image.grid = (4, 4)
    c.model.modalities.image.input_shape = (16, 16, 3)
    c.batch_size = 8
    c.optimizer.warmup_steps = 1
    c.eval.num_examples, c.eval.batch_size = 40, 20
    c.eval.probe_train_examples = 40
  return c


def late_start(arm: str, steps: int) -> Optional[int]:
  """The step at which the full arm's late objectives start (None for the other arms)."""
  return max(1, int(round(LATE_FRACTION * steps))) if arm == "full" else None


def with_steps(config, arm: str, steps: int):
  """A copy of `config` training `steps` steps (the full arm's late start at 80% of them),
  saving only the final state."""
  c = config.copy_and_resolve_references()
  c.total_steps = steps
  c.checkpoint.every_steps = steps
  start = late_start(arm, steps)
  c.objectives.starts = {k: start for k in LATE} if start is not None else {}
  return c


# ------------------------------------------------------------------------------ FLOPs

def abstract_batch(cfg, mesh) -> Dict[str, Any]:
  """ShapeDtypeStructs of the global batch the train step of resolved `cfg` reads: the model's
  inputs and the data keys its active objectives need (LocCa's regions), from one real batch
  of the data (the built-in scenes)."""
  it = trainer.make_data_iterator(cfg)
  raw = next(it)
  from mmjax import models  # pylint: disable=import-outside-toplevel
  model = models.build_model(cfg.model)
  extra = objectives.batch_keys(cfg.objectives.active)
  inputs = dict(trainer.model_inputs(raw, model), **{k: raw[k] for k in extra if k in raw})
  sh = sharding.batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                     sharding=sh), inputs)


def phase_flops(config, arm: str) -> Dict[str, Tuple[float, float]]:
  """{'early': (model, hardware) FLOPs of one train step, 'late': ... (full arm only)}: each
  phase's own program (configure.phase_config), nothing run."""
  cfg = configure.resolve(with_steps(config, arm, 100))
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  out = {}
  phases = {"early": 0}
  if arm == "full":
    phases["late"] = late_start(arm, 100)
  for name, step in phases.items():
    c = configure.phase_config(cfg, step)
    out[name] = tuple(train_lib.flop_counts(c, mesh, abstract_batch(c, mesh)))
  return out


def total_flops(arm: str, steps: int, flops: Dict[str, Tuple[float, float]], which: int = 0):
  """Training FLOPs of `steps` steps (which=0: model FLOPs, 1: hardware FLOPs)."""
  start = late_start(arm, steps)
  if start is None:
    return steps * flops["early"][which]
  return start * flops["early"][which] + (steps - start) * flops["late"][which]


def solve_steps(arm: str, budget: float, flops) -> int:
  """The step count whose model FLOPs (total_flops) come closest to `budget`."""
  per_step = (flops["early"][0] if arm != "full" else
              LATE_FRACTION * flops["early"][0] + (1 - LATE_FRACTION) * flops["late"][0])
  guess = max(2, int(round(budget / per_step)))
  candidates = range(max(2, guess - 2), guess + 3)
  return min(candidates, key=lambda t: abs(total_flops(arm, t, flops) - budget))


# ------------------------------------------------------------------------------ runs

def final_step(workdir: str) -> Optional[int]:
  """The latest checkpoint step of a run's workdir (None: none)."""
  if not os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
    return None
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=1)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def phase_record(workdir: str, start: Optional[int]) -> Optional[Dict[str, Any]]:
  """Evidence of the late phase from the run's metrics.jsonl: the late objectives' metric
  keys at the first and the last logged step (None: no late phase)."""
  if start is None:
    return None
  path = os.path.join(workdir, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as fh:
      rows = [json.loads(line) for line in fh if line.strip()]
  late = lambda r: sorted(k for k in r if any(k.startswith(o) for o in LATE))  # noqa: E731
  first, last = (rows[0], rows[-1]) if rows else ({}, {})
  return {"start": start, "first_step": first.get("step"), "first_late_keys": late(first),
          "last_step": last.get("step"), "last_late_keys": late(last),
          "switched": bool(rows) and not late(first) and bool(late(last))
          and last.get("step", 0) > start}


def evaluate_run(workdir: str, steps: int, cached: Dict[str, Any]) -> Dict[str, Any]:
  """eval.py's evaluators on the final checkpoint: those of EVALUATORS registered here and not
  in `cached` yet; {'results', 'evaluated', 'missing'}."""
  registered = set(evaluators.names())
  evaluated = list(cached.get("evaluated", []))
  todo = [e for e in EVALUATORS if e in registered and e not in evaluated]
  results = dict(cached.get("results", {}))
  if todo:
    path = os.path.join(ckpt_lib.checkpoint_dir(workdir), str(steps))
    results.update(evaluate.run(checkpoint=path, evaluators=todo, devices=jax.devices()[:1]))
    evaluated += todo
  missing = [e for e in EVALUATORS if e not in evaluated]
  return {"results": results, "evaluated": evaluated, "missing": missing}


def train_run(config, arm: str, seed: int, steps: int, workdir: str, log) -> Dict[str, Any]:
  """Train (arm, seed) for `steps` in `workdir` unless its final checkpoint and results.json
  exist, then evaluate it; the run's record (also written to workdir/results.json)."""
  res_path = os.path.join(workdir, "results.json")
  cached = records_lib.read(res_path) or {}
  if cached and cached.get("steps") != steps:
    raise ValueError(f"{workdir} holds a run of {cached.get('steps')} steps, this budget "
                     f"gives {steps}; pass another --workdir (or the budget it was run with)")
  latest = final_step(workdir)
  done = latest == steps and bool(cached)
  if done:
    log(f"{arm} seed {seed}: cached ({steps} steps, final checkpoint and results in {workdir})")
  else:
    t0 = time.perf_counter()
    out = trainer.train(with_steps(config, arm, steps), workdir, log_to_stdout=False,
                        devices=jax.devices()[:1])
    cached = {"train_s": time.perf_counter() - t0, "resumed_from": latest,
              "final_loss": float(out["metrics"].get("loss", float("nan")))}
    log(f"{arm} seed {seed}: trained {out['step']} steps in {cached['train_s']:.1f} s "
        f"(from {latest or 0}), loss {cached['final_loss']:.4f}")
  t0 = time.perf_counter()
  ev = evaluate_run(workdir, steps, cached)
  if ev["evaluated"] != cached.get("evaluated"):
    log(f"{arm} seed {seed}: evaluated {', '.join(ev['evaluated'])} "
        f"({time.perf_counter() - t0:.1f} s)" + (f"; missing {', '.join(ev['missing'])}"
                                                 if ev["missing"] else ""))
  rec = {**cached, **ev, "arm": arm, "seed": seed, "steps": steps, "workdir": workdir,
         "phase": phase_record(workdir, late_start(arm, steps))}
  records_lib.write(res_path, rec)
  return rec


# ------------------------------------------------------------------------------ summary

def metric_cells(runs: List[Dict[str, Any]], key: str) -> Dict[str, Any]:
  """One arm's seeds for one metric: {'values', 'mean', 'min', 'max'} or {'note'} where no run
  has the value (the evaluator missing, skipped, or not reporting that key)."""
  ev = key.split("/")[0]
  values = [r["results"][key] for r in runs if isinstance(r["results"].get(key), (int, float))]
  if values:
    return {"values": values, "mean": float(np.mean(values)), "min": float(min(values)),
            "max": float(max(values))}
  if any(ev in r["missing"] for r in runs):
    return {"note": f"missing: evaluator {ev} is not registered in this checkout"}
  why = next((r["results"].get(f"{ev}/skipped") for r in runs
              if r["results"].get(f"{ev}/skipped")), None)
  return {"note": f"— ({why})" if why else f"— (no {key} in the results)"}


def compare(a: str, ca, b: str, cb) -> str:
  """A plain sentence on whether two arms' seed ranges overlap."""
  if "mean" not in ca or "mean" not in cb:
    return f"{a} vs {b}: not comparable (no value for one of them)."
  if ca["max"] < cb["min"] or cb["max"] < ca["min"]:
    hi, lo = (a, b) if ca["mean"] > cb["mean"] else (b, a)
    return f"{a} vs {b}: the seed ranges separate; {hi} is above {lo}."
  return f"{a} vs {b}: the seed ranges overlap, the difference is inside the noise."


def metric_tables(by_arm: Dict[str, List[Dict[str, Any]]]) -> str:
  """Per METRICS entry: a table (arm, mean, seed range, seeds) and one sentence per pair."""
  out = []
  for key, label in METRICS:
    cells = {a: metric_cells(runs, key) for a, runs in by_arm.items()}
    lines = [f"### {label} (`{key}`)", "", "| arm | mean | seed range (min–max) | seeds |",
             "|---|---|---|---|"]
    for a, c in cells.items():
      if "mean" in c:
        lines.append(f"| {a} | {c['mean']:.3f} | {c['min']:.3f}–{c['max']:.3f} | "
                     f"{len(c['values'])} |")
      else:
        lines.append(f"| {a} | {c['note']} | | {len(by_arm[a])} |")
    lines.append("")
    lines += [compare(a, cells[a], b, cells[b]) for a, b in itertools.combinations(cells, 2)]
    out.append("\n".join(lines))
  return "\n\n".join(out)


def compact_table(by_arm: Dict[str, List[Dict[str, Any]]]) -> str:
  """Every METRICS entry in one table: a row per metric, a column per arm, 'mean (min–max)'."""
  arms = list(by_arm)
  lines = ["| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
  for key, label in METRICS:
    cells = [metric_cells(by_arm[a], key) for a in arms]
    if not any("mean" in c for c in cells):
      continue
    fmt = lambda c: (f"{c['mean']:.3f} ({c['min']:.3f}–{c['max']:.3f})" if "mean" in c  # noqa: E731
                     else "—")
    lines.append(f"| {label} | " + " | ".join(fmt(c) for c in cells) + " |")
  return "\n".join(lines)


def header(r: Dict[str, Any]) -> str:
  """One dataset's budget and each arm's plan."""
  lines = [f"Budget: {r['budget'] / 1e15:.6g} PFLOPs model FLOPs per run ({r['budget_source']}); "
           f"{r['total_flops'] / 1e15:.6g} PFLOPs over this dataset's runs.", "",
           "| arm | loss weights | steps | late start | GFLOPs / step (early, late) | "
           "model FLOPs / budget |", "|---|---|---|---|---|---|"]
  for a, p in r["arms"].items():
    per = ", ".join(f"{p['flops'][k][0] / 1e9:.4g}" for k in ("early", "late") if k in p["flops"])
    lines.append(f"| {a} | {', '.join(ARMS[a])} | {p['steps']} | {p['late_start'] or '—'} | "
                 f"{per} | {p['total_flops'] / r['budget']:.4f} |")
  return "\n".join(lines)


# ------------------------------------------------------------------------------ the ablation

def plan(arms: Sequence[str], quick: bool, reference_steps: int, budget_pflops: float, log,
         dataset: str = "scenes", data_dir: str = ""):
  """(budget, its source, {arm: {'flops', 'steps', 'late_start', 'total_flops', ...}})."""
  flops = {}
  for a in dict.fromkeys([*arms, "full"]):
    flops[a] = phase_flops(arm_config(a, 0, quick, dataset, data_dir), a)
  if budget_pflops:
    budget, source = budget_pflops * 1e15, f"--budget_pflops={budget_pflops}"
  else:
    budget = total_flops("full", reference_steps, flops["full"])
    source = f"the full arm at {reference_steps} steps"
  out = {}
  for a in arms:
    steps = solve_steps(a, budget, flops[a])
    out[a] = {"flops": flops[a], "steps": steps, "late_start": late_start(a, steps),
              "total_flops": total_flops(a, steps, flops[a]),
              "total_hw_flops": total_flops(a, steps, flops[a], which=1)}
    log(f"{dataset} {a}: {steps} steps" + (f" (silc, tips from step {out[a]['late_start']})"
                                           if out[a]["late_start"] else "")
        + f", {out[a]['total_flops'] / budget:.4f} x the budget")
  log(f"{dataset}: budget {budget / 1e15:.6g} PFLOPs model FLOPs per run ({source})")
  return budget, source, out


def run_dataset(dataset: str, workdir: str, arms: Sequence[str], seeds: Sequence[int],
                reference_steps: int, budget_pflops: float, quick: bool, log) -> Dict[str, Any]:
  """Every (arm, seed) of one dataset: {'budget', 'budget_source', 'arms' (the plan),
  'runs' {arm: [record per seed]}}."""
  data_dir = digits_data(workdir, quick) if dataset == "digits" else ""
  budget, source, arm_plan = plan(arms, quick, reference_steps, budget_pflops, log, dataset,
                                  data_dir)
  runs = {}
  for a in arms:
    runs[a] = [train_run(arm_config(a, s, quick, dataset, data_dir), a, s, arm_plan[a]["steps"],
                         os.path.join(workdir, dataset, a, f"seed{s}"), log) for s in seeds]
  return {"budget": budget, "budget_source": source, "arms": arm_plan, "runs": runs}


def run(workdir: str, out_dir: Optional[str] = None, arms: Sequence[str] = tuple(ARMS),
        seeds: Sequence[int] = (0, 1, 2), reference_steps: int = 400, budget_pflops: float = 0.0,
        quick: bool = False, command: str = "", log=None,
        datasets: Sequence[str] = DATASETS) -> Dict[str, Any]:
  """Train and evaluate every (dataset, arm, seed) at the matched budget (resuming); write
  results.json and summary.md to out_dir (default: workdir)."""
  log = log or (lambda *a, **k: print(*a, flush=True, **k))
  t_start = time.perf_counter()
  out_dir = out_dir or workdir
  per = {d: run_dataset(d, workdir, arms, seeds, reference_steps, budget_pflops, quick, log)
         for d in datasets}
  meta = {"command": command, "matched": MATCHED, "seeds": list(seeds), "quick": quick,
          "runs": len(datasets) * len(arms) * len(seeds),
          "processor": processor(), "cpus": os.cpu_count(), "device": jax.devices()[0].device_kind,
          "missing_evaluators": [e for e in EVALUATORS if e not in evaluators.names()],
          "wall_s": time.perf_counter() - t_start}
  for d, r in per.items():
    r["total_flops"] = sum(p["total_flops"] for p in r["arms"].values()) * len(seeds)
    r["total_hw_flops"] = sum(p["total_hw_flops"] for p in r["arms"].values()) * len(seeds)
  meta["total_flops"] = sum(r["total_flops"] for r in per.values())
  meta["total_hw_flops"] = sum(r["total_hw_flops"] for r in per.values())
  text = summary(meta, per, len(seeds))
  os.makedirs(out_dir, exist_ok=True)
  records_lib.write(os.path.join(out_dir, "results.json"), {
      "meta": meta, "datasets": {d: {"budget_flops": r["budget"], "budget_source":
                                     r["budget_source"], "arms": r["arms"],
                                     "total_flops": r["total_flops"]} for d, r in per.items()},
      "runs": [x for r in per.values() for rs in r["runs"].values() for x in rs]})
  with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as fh:
    fh.write(text)
  return {"meta": meta, "datasets": per, "summary": text}


def summary(meta: Dict[str, Any], per: Dict[str, Dict[str, Any]], n_seeds: int) -> str:
  """summary.md: the command, the machine and the total compute, then per dataset its plan
  and its metric tables."""
  lines = ["# SigLIP 2 ablation at matched training FLOPs", "",
           f"Command: `{meta['command']}`", "",
           f"Machine: {meta['processor'] or 'unknown CPU'}, {meta['cpus']} CPU threads, jax device "
           f"{meta['device']}; wall {meta['wall_s']:.0f} s this invocation.", "",
           f"Matched: {MATCHED}. Seeds {', '.join(map(str, meta['seeds']))}; total compute "
           f"{meta['total_flops'] / 1e15:.6g} PFLOPs model ({meta['total_hw_flops'] / 1e15:.6g} "
           f"PFLOPs hardware, the whole lowered step) over {meta['runs']} runs.", "",
           "Each metric: the mean over seeds and the seed range; two arms whose ranges overlap "
           "differ inside the noise"
           + (" (one seed: each range is a single value, so this says little)" if n_seeds == 1
              else "") + "."]
  for d, r in per.items():
    lines += ["", f"## {d}", "", header(r), "", "Mean over seeds (seed range):", "",
              compact_table(r["runs"]), "", metric_tables(r["runs"])]
  return "\n".join(lines) + "\n"


def _define_flags():
  flags.DEFINE_string("workdir", "runs/siglip2_ablation", "Runs: <workdir>/<arm>/seed<s>.")
  flags.DEFINE_string("out", None, "Folder for results.json and summary.md (default: workdir).")
  flags.DEFINE_list("arms", list(ARMS), f"Arms, from {', '.join(ARMS)}.")
  flags.DEFINE_list("datasets", list(DATASETS), f"Datasets, from {', '.join(DATASETS)}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every arm.")
  flags.DEFINE_integer("reference_steps", None, "Budget = the full arm's model FLOPs at these "
                       f"steps (default 400; {QUICK_STEPS} with --quick).")
  flags.DEFINE_float("budget_pflops", 0.0, "Budget in PFLOPs per run (overrides the reference).")
  flags.DEFINE_boolean("quick", False, "A dry run: width 32, 1 layer, 16 px, batch 8, "
                       f"~{QUICK_STEPS} steps, 40 eval examples.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  unknown = [a for a in f.arms if a not in ARMS]
  if unknown:
    raise app.UsageError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
  unknown = [d for d in f.datasets if d not in DATASETS]
  if unknown:
    raise app.UsageError(f"unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}")
  try:
    seeds = [int(s) for s in f.seeds]
  except ValueError as e:
    raise app.UsageError(f"--seeds={','.join(f.seeds)}: write integers, e.g. 0,1,2") from e
  ref = f.reference_steps or (QUICK_STEPS if f.quick else 400)
  command = " ".join(["python -m mmjax.bench.siglip2_ablation", *sys.argv[1:]])
  res = run(f.workdir, f.out, f.arms, seeds, ref, f.budget_pflops, f.quick, command,
            datasets=f.datasets)
  print(res["summary"])


if __name__ == "__main__":
  _define_flags()
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
