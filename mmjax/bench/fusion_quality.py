"""Quality of every fusion design at matched training compute.

  python -m mmjax.bench.fusion_quality [--out=docs/fusion_quality] [--workdir=runs/fusion_quality]
      [--reference=hier_multi_to_one] [--reference_steps=300] [--budget_pflops=...]
      [--points=3] [--fusions=early_concat,...] [--seed=0] [--quick]
      [--objectives=caption=1,prefix_lm=1]   # add describing objectives to every design
      [--robustness]   # also: each modality absent / corrupted at the last point (robustness.md)

Every registered fusion design (mmjax.fusion.names(), or --fusions) trains on the built-in
image-text set with its mmjax/configs/fusion/<name>.py (early_sum too, with
model.early_sum_align=pad, so that all share one task and one evaluation; a design that ships
no config: configs/default.py with its fusion and the loss weights it can serve) for the same
training FLOPs. FLOPs per train step are XLA's count of the lowered step (forward,
backward, optimizer and every objective the config weights: ITM's re-paired forwards, MLM, MIM),
perf.step_flops; each design gets total_steps = round(budget / FLOPs per step), with its own
warm-up + cosine schedule over those steps. The budget is --budget_pflops, or the reference
design's FLOPs per step x --reference_steps.

`--points` checkpoints, evenly spaced over each run, are evaluated with eval.py's evaluators on
the held-out split (zero-shot, retrieval both ways, hard-negative ITM, MLM): the curve of a run
towards its budget (the learning rate is annealed only at its last point). Zero-shot and
retrieval score the contrastive embeddings of the unimodal towers; ITM scores the fused
representation through the ITM head (dual_encoder, which has none, by embedding similarity).

Writes quality.json (every point), quality.csv, quality.png (accuracy against training FLOPs)
and summary.md (the table at the full budget) to --out. Runs resume: a finished run's
checkpoints and evaluations in --workdir are reused.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import csv
import json
import math
import os
import time
from typing import Any, Dict, List

import jax
from absl import app, flags, logging

from mmjax.configs import default as default_config
from mmjax import checkpoint as ckpt_lib
from mmjax import configure, evaluate, models, sharding, summary, train_lib, trainer
from mmjax.bench.fusion_sweep import shipped_config, valid_loss_weights
from mmjax.bench.step import synthetic_batch
from mmjax.data import builtin
from mmjax.fusion import design_of, names
from mmjax.perf import step_flops

METRICS = {  # column -> results.json key
    "zero_shot": "zero_shot/accuracy",
    "i2t_R@1": "retrieval/a2b_R@1", "i2t_R@10": "retrieval/a2b_R@10",
    "t2i_R@1": "retrieval/b2a_R@1", "t2i_R@10": "retrieval/b2a_R@10",
    "itm_pairwise": "itm/pairwise_accuracy", "itm_group": "itm/group_accuracy",
    "mlm": "mlm/accuracy",
    "caption_cider": "caption/cider", "caption_em": "caption/exact_match",
}
# --objectives: the describing / ordering objectives a comparison may add to every design.
EXTRA_OBJECTIVES = ("caption", "prefix_lm", "sentence_order")


def quality_config(name: str, quick: bool = False, seed: int = 0, extra=None):
  """mmjax/configs/fusion/<name>.py on the default image-text task (tokens of unequal length
  padded where a design sums them); a design without a shipped config gets the default
  config, with the loss weights it cannot serve set to 0. `extra` {objective: weight} adds
  describing / ordering objectives (prefix_lm only where the design has a prefix-LM mask; the
  caption evaluator joins the evaluators when one of caption / prefix_lm trains)."""
  base = default_config.get_config()
  c = shipped_config(name)
  shipped = c is not None
  if not shipped:
    c = default_config.get_config()
    c.model.fusion = name
  c.model.modalities = base.model.modalities
  c.data = base.data
  c.eval = base.eval
  if not shipped:
    valid_loss_weights(c)
  c.model.early_sum_align = "pad"  # read only by designs that sum the modalities
  for k, w in (extra or {}).items():
    if k == "prefix_lm" and not design_of(configure.resolve_model(c)).prefix_lm:
      w = 0.0
    c.loss_weights[k] = float(w)
  if any(float(c.loss_weights.get(k, 0.0)) > 0 for k in ("caption", "prefix_lm")):
    c.eval.evaluators = tuple(c.eval.evaluators) + ("caption",)
  c.seed = seed
  c.log_every_steps = 10 ** 9  # first and last steps only
  if quick:
    c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 2, 64, 32
    for k in list(c.model.depth.keys()):
      c.model.depth[k] = min(int(c.model.depth[k]), 1)
    c.batch_size = 8
    c.optimizer.warmup_steps = 1
    c.eval.num_examples, c.eval.batch_size = 40, 20
  return c


def train_step_flops(config) -> float:
  """FLOPs of one global train step (XLA, lowered program), on one device, nothing run."""
  model = models.build_model(config)
  tx, schedule = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  state, shard = train_lib.abstract_state(model, tx, mesh)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                      sharding=sharding.batch_sharding(mesh)),
                       synthetic_batch(config))
  step = train_lib.make_train_step(config, model, tx, schedule, mesh, shard)
  return step_flops(step.lower(state, batch))


def plan(fusions, budget_flops: float, flops_per_step: Dict[str, float], points: int):
  """{fusion: (total_steps, [evaluated steps])} spending `budget_flops` on every fusion."""
  out = {}
  for f in fusions:
    steps = max(points, int(round(budget_flops / flops_per_step[f])))
    every = math.ceil(steps / points)
    out[f] = (steps, sorted({min(every * (i + 1), steps) for i in range(points)}))
  return out


def _evaluate(workdir: str, step: int, evaluators=None, tag: str = "") -> Dict[str, Any]:
  cache = os.path.join(workdir, "eval", f"step_{step}{tag}.json")
  if os.path.exists(cache):
    with open(cache, encoding="utf-8") as fh:
      return json.load(fh)
  path = os.path.join(ckpt_lib.checkpoint_dir(workdir), str(step))
  res = evaluate.run(checkpoint=path, evaluators=evaluators, devices=jax.devices()[:1])
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  with open(cache, "w", encoding="utf-8") as fh:
    json.dump(res, fh, indent=1)
  return res


def run_fusion(config, workdir: str, steps: int, eval_steps: List[int], log,
               robustness: bool = False) -> Dict[str, Any]:
  """Train `config` for `steps` in `workdir` (resuming), keeping `eval_steps`; evaluate them
  (and, with `robustness`, run the robustness evaluator on the last)."""
  config = config.copy_and_resolve_references()
  config.total_steps = steps
  config.checkpoint.every_steps = eval_steps[0]
  config.checkpoint.keep = len(eval_steps) + 1
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=config.checkpoint.keep)
  latest = ckpt.latest_step()
  ckpt.close()
  timing = os.path.join(workdir, "train_time.json")
  trained_now = latest != steps
  if trained_now:
    t0 = time.perf_counter()
    out = trainer.train(config, workdir, log_to_stdout=False, devices=jax.devices()[:1])
    with open(timing, "w", encoding="utf-8") as fh:
      json.dump({"train_s": time.perf_counter() - t0, "resumed_from": latest}, fh)
    log(f"  trained {out['step']} steps, loss {out['metrics']['loss']:.4f}")
  train_s = None
  if os.path.exists(timing):
    with open(timing, encoding="utf-8") as fh:
      train_s = json.load(fh)["train_s"]
  evals = []
  for s in eval_steps:
    t0 = time.perf_counter()
    res = _evaluate(workdir, s)
    evals.append({"step": s, **{k: res.get(v) for k, v in METRICS.items()},
                  "itm_method": res.get("itm/method")})
    log(f"  step {s}: " + ", ".join(f"{k}={evals[-1][k]:.3f}" for k in METRICS
                                     if evals[-1][k] is not None)
        + f" ({time.perf_counter() - t0:.0f} s)")
  out = {"train_s": train_s, "trained_now": trained_now, "evals": evals}
  if robustness:
    t0 = time.perf_counter()
    res = _evaluate(workdir, eval_steps[-1], ["robustness"], "_robustness")
    out["robustness"] = {k[len("robustness/"):]: v for k, v in res.items()
                         if k.startswith("robustness/")}
    log(f"  robustness at step {eval_steps[-1]}: {len(out['robustness'])} values "
        f"({time.perf_counter() - t0:.0f} s)")
  return out


# The robustness tables: (metric, label, [(condition, column)]) at severity 3 and absent.
ROBUSTNESS_TABLES = (
    ("zero_shot/accuracy", "zero-shot accuracy",
     [("image_absent", "image absent"), ("image_noise3", "noise 3"), ("image_blur3", "blur 3"),
      ("image_occlusion3", "occlusion 3"), ("image_noise1", "noise 1"), ("image_blur1", "blur 1"),
      ("image_occlusion1", "occlusion 1")]),
    ("retrieval/b2a_R@10", "text→image R@10",
     [("image_absent", "image absent"), ("text_absent", "text absent"),
      ("image_noise3", "image noise 3"), ("image_blur3", "image blur 3"),
      ("image_occlusion3", "image occl. 3"), ("text_drop3", "text drop 3"),
      ("text_shuffle3", "text shuffle 3"), ("text_misspell3", "text misspell 3")]),
    ("itm/pairwise_accuracy", "hard-negative ITM pairwise accuracy",
     [("image_absent", "image absent"), ("text_absent", "text absent"),
      ("image_noise3", "image noise 3"), ("image_occlusion3", "image occl. 3"),
      ("text_drop3", "text drop 3"), ("text_shuffle3", "text shuffle 3"),
      ("text_misspell3", "text misspell 3")]),
)


def robustness_markdown(rows: List[Dict[str, Any]]) -> str:
  """One table per ROBUSTNESS_TABLES metric: clean value, then each condition's value and its
  drop from clean, in percent (n/a where the run has no such value)."""
  out = []
  for metric, label, conds in ROBUSTNESS_TABLES:
    head = "| fusion | clean | " + " | ".join(c for _, c in conds) + " |"
    lines = [f"**{label}** (value, drop from clean in points)", "", head,
             "|" + "---|" * (len(conds) + 2)]
    for r in rows:
      rob = r.get("robustness") or {}
      clean = rob.get(f"clean/{metric}")
      cells = []
      for cond, _ in conds:
        v = rob.get(f"{cond}/{metric}")
        cells.append("n/a" if v is None or clean is None
                     else f"{100 * v:.1f} ({100 * (clean - v):+.1f})")
      lines.append(f"| {r['fusion']} | {'n/a' if clean is None else f'{100 * clean:.1f}'} | "
                   + " | ".join(cells) + " |")
    out.append("\n".join(lines))
  return "\n\n".join(out)


def markdown(rows: List[Dict[str, Any]], chance: Dict[str, float]) -> str:
  head = ("| fusion | params | GFLOPs / step | steps | train TFLOPs | zero-shot | i→t R@1 / R@10 "
          "| t→i R@1 / R@10 | ITM pairwise | ITM group | MLM acc. | train s |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
  for r in rows:
    e = r["evals"][-1]
    itm = pct(e["itm_pairwise"]) + ("*" if e["itm_method"] != "ITM head" else "")
    wall = "" if r["train_s"] is None else f"{r['train_s']:.0f}"
    lines.append(
        f"| {r['fusion']} | {r['params']:,} | {r['flops_per_step'] / 1e9:.1f} | {e['step']} | "
        f"{e['step'] * r['flops_per_step'] / 1e12:.1f} | {pct(e['zero_shot'])} | "
        f"{pct(e['i2t_R@1'])} / {pct(e['i2t_R@10'])} | {pct(e['t2i_R@1'])} / "
        f"{pct(e['t2i_R@10'])} | {itm} | {pct(e['itm_group'])} | {pct(e['mlm'])} | {wall} |")
  lines.append(f"| chance | | | | | {pct(chance['zero_shot'])} | {pct(chance['R@1'])} / "
               f"{pct(chance['R@10'])} | {pct(chance['R@1'])} / {pct(chance['R@10'])} | 50.0 | "
               f"{pct(chance['itm_group'])} | | |")
  return "\n".join(lines)


def plot(rows, chance, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = (("zero_shot", "zero-shot accuracy", chance["zero_shot"]),
            ("t2i_R@10", "text→image R@10", chance["R@10"]),
            ("itm_pairwise", "hard-negative ITM pairwise acc.", 0.5))
  fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
  for ax, (key, label, ch) in zip(axes, panels):
    for r in rows:
      pts = [(e["step"] * r["flops_per_step"] / 1e12, e[key]) for e in r["evals"]
             if e[key] is not None]
      if pts:
        style = "o--" if key == "itm_pairwise" and r["evals"][-1]["itm_method"] != "ITM head" else "o-"
        ax.plot(*zip(*pts), style, label=r["fusion"])
    ax.axhline(ch, color="gray", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("training TFLOPs")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run(out_dir: str, workdir: str, fusions=None, reference: str = "hier_multi_to_one",
        reference_steps: int = 300, budget_pflops: float = 0.0, points: int = 3,
        quick: bool = False, seed: int = 0, log=None, extra=None,
        robustness: bool = False) -> Dict[str, Any]:
  log = log or (lambda *a, **k: print(*a, flush=True, **k))
  fusions = tuple(fusions) if fusions else names()
  t_start = time.perf_counter()
  configs = {f: quality_config(f, quick, seed, extra)
             for f in dict.fromkeys([*fusions, reference])}
  flops = {f: train_step_flops(c) for f, c in configs.items()}
  budget = budget_pflops * 1e15 if budget_pflops else flops[reference] * reference_steps
  schedule = plan(fusions, budget, flops, points)
  log(f"budget {budget / 1e15:.4g} PFLOPs: " + ", ".join(
      f"{f} {schedule[f][0]} steps" for f in fusions))
  rows = []
  for f in fusions:
    steps, eval_steps = schedule[f]
    log(f"{f}: {flops[f] / 1e9:.1f} GFLOPs/step x {steps} steps")
    res = run_fusion(configs[f], os.path.join(workdir, f), steps, eval_steps, log, robustness)
    model = models.build_model(configs[f])
    variables = summary.param_shapes(model, models.dummy_batch(configs[f], 1))
    rows.append({"fusion": f, "params": summary.count_params({"params": variables["params"]})["total"],
                 "flops_per_step": flops[f], "total_steps": steps,
                 "batch_size": configs[f].batch_size, **res})
  first = configs[fusions[0]]
  e0 = first.eval
  chance = {"zero_shot": 1 / len(builtin.class_names(first.data.task)),
            "R@1": 1 / e0.num_examples, "R@10": 10 / e0.num_examples,
            "itm_group": 1 / (1 + first.data.num_hard_negatives)}
  table = markdown(rows, chance)
  os.makedirs(out_dir, exist_ok=True)
  meta = {"device": jax.devices()[0].device_kind, "budget_flops": budget, "reference": reference,
          "reference_steps": reference_steps, "points": points, "quick": quick, "seed": seed,
          "eval_examples": e0.num_examples, "wall_s": time.perf_counter() - t_start}
  with open(os.path.join(out_dir, "quality.json"), "w", encoding="utf-8") as fh:
    json.dump({"meta": meta, "chance": chance, "rows": rows}, fh, indent=1)
  with open(os.path.join(out_dir, "quality.csv"), "w", newline="", encoding="utf-8") as fh:
    w = csv.writer(fh)
    w.writerow(["fusion", "params", "flops_per_step", "step", "train_flops", *METRICS])
    for r in rows:
      for e in r["evals"]:
        w.writerow([r["fusion"], r["params"], r["flops_per_step"], e["step"],
                    e["step"] * r["flops_per_step"], *(e[k] for k in METRICS)])
  png = plot(rows, chance, os.path.join(out_dir, "quality.png"))
  with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as fh:
    fh.write(f"Budget {budget / 1e15:.4g} PFLOPs per design, seed {seed}, device "
             f"{meta['device']}, {e0.num_examples} held-out examples, wall "
             f"{meta['wall_s']:.0f} s. Percentages; * = ITM by embedding similarity.\n\n"
             f"{table}\n")
  out = {"rows": rows, "table": table, "plot": png, "meta": meta, "budget": budget}
  if robustness:
    out["robustness_table"] = robustness_markdown(rows)
    with open(os.path.join(out_dir, "robustness.md"), "w", encoding="utf-8") as fh:
      fh.write(f"Budget {budget / 1e15:.4g} PFLOPs per design, seed {seed}, device "
               f"{meta['device']}, {e0.num_examples} held-out examples. Percentages.\n\n"
               f"{out['robustness_table']}\n")
  return out


def _define_flags():
  flags.DEFINE_string("out", "docs/fusion_quality", "Results folder.")
  flags.DEFINE_string("workdir", "runs/fusion_quality", "Training runs (one folder per fusion).")
  flags.DEFINE_list("fusions", None, "Fusions to compare (default: every registered design).")
  flags.DEFINE_string("reference", "hier_multi_to_one", "Design whose step count sets the budget.")
  flags.DEFINE_integer("reference_steps", 300, "Budget = reference FLOPs/step x these steps.")
  flags.DEFINE_float("budget_pflops", 0.0, "Budget in PFLOPs (overrides the reference).")
  flags.DEFINE_integer("points", 3, "Evaluated checkpoints per run, evenly spaced.")
  flags.DEFINE_integer("seed", 0, "Seed of every run.")
  flags.DEFINE_boolean("quick", False, "Width 32, one layer per stage, batch 8, 40 eval examples.")
  flags.DEFINE_boolean("robustness", False, "Also run the robustness evaluator at each run's "
                       "last point; writes robustness.md.")
  flags.DEFINE_list("objectives", None, "Extra objectives on every design, e.g. caption=1,"
                    f"prefix_lm=1 (from {', '.join(EXTRA_OBJECTIVES)}).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  unknown = [x for x in [*(f.fusions or ()), f.reference] if x not in names()]
  if unknown:
    raise app.UsageError(f"unknown fusion(s) {unknown}; choose from {', '.join(names())}")
  extra = {}
  for item in f.objectives or ():
    k, _, w = item.partition("=")
    if k not in EXTRA_OBJECTIVES or not w:
      raise app.UsageError(f"--objectives={item}: write NAME=WEIGHT with NAME one of "
                           f"{', '.join(EXTRA_OBJECTIVES)}")
    extra[k] = float(w)
  res = run(f.out, f.workdir, f.fusions, f.reference, f.reference_steps, f.budget_pflops,
            f.points, f.quick, f.seed, extra=extra, robustness=f.robustness)
  print(res["table"])
  if f.robustness:
    print(res["robustness_table"])


if __name__ == "__main__":
  _define_flags()
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
