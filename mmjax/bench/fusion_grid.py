"""The fusion-science grid: every fusion design x compute budget x seed, trained at matched
training FLOPs and scored on tasks where fusion matters, with statistics that can rank.

  python -m mmjax.bench.fusion_grid [--workdir=runs/fusion_grid] [--out=docs/fusion_quality]
      [--designs=early_sum,...] [--budgets_pflops=0.003,0.01,0.03] [--seeds=0,1,2,3,4]
      [--max_runs=N] [--report_only] [--quick]

Each design trains with mmjax/configs/fusion/<name>.py (fusion_quality.quality_config: the
built-in image-text scenes, early_sum with padded alignment), at data.text_len 64 so that
every caption is whole (the default 32 cuts the relations the minimal pairs change). A run
of budget B takes round(B / FLOPs per step) steps (XLA's count of the lowered step, forward,
backward, optimizer and every weighted objective) with its own warm-up + cosine schedule.
Each run is scored by eval.py's evaluators:
  zero_shot, retrieval, itm   the alignment and hard-negative matching of fusion_quality
  minimal_pairs               caption matching against minimally different negatives, per kind
                              (attribute swap, relation flip, argument swap, count, word
                              order), by the design's ITM head (a dual encoder: similarity)
  robustness                  zero-shot and ITM with the image absent, and the image and the
                              text corrupted at severity 3
Runs are cached per (design, budget, seed) in <workdir>/<design>/b<B>/s<seed>/results.json:
an invocation trains only what is missing (at most --max_runs), so the grid fills over
several invocations on a CPU; --report_only writes the report from what is there.

Writes grid.json (every run), summary.md (per metric and budget: mean, seed range, bootstrap
95% interval and rank range of every design, which pairs separate, and the seeds the measured
variance says a tied pair needs; the fitted quality-vs-FLOPs curves) and quality_vs_flops.png
to --out (seed_stats.py holds the statistics).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.set_default_platforms()  # before jax: no TPU backend on hosts without TPUs
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import itertools
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np
from absl import app, flags, logging

from mmjax import checkpoint as ckpt_lib
from mmjax import evaluate, trainer
from mmjax.bench import fusion_quality, records as records_lib, seed_stats
from mmjax.fusion import names
from mmjax.perf import processor

EVALUATORS = ("zero_shot", "retrieval", "itm", "minimal_pairs", "robustness")
METRICS = (  # (results key, label)
    ("zero_shot/accuracy", "zero-shot accuracy"),
    ("retrieval/b2a_R@10", "text→image R@10"),
    ("itm/pairwise_accuracy", "hard-negative ITM, pairwise"),
    ("minimal_pairs/attribute_swap_accuracy", "minimal pairs: attribute swap"),
    ("minimal_pairs/relation_flip_accuracy", "minimal pairs: relation flip"),
    ("minimal_pairs/argument_swap_accuracy", "minimal pairs: argument swap"),
    ("minimal_pairs/count_accuracy", "minimal pairs: one object too many"),
    ("minimal_pairs/word_order_accuracy", "minimal pairs: word order"),
    ("minimal_pairs/mean_accuracy", "minimal pairs: mean of the kinds"),
    ("robustness/image_absent/zero_shot/accuracy", "robustness: zero-shot, image absent"),
    ("robustness/image_noise3/zero_shot/accuracy", "robustness: zero-shot, image noise 3"),
    ("robustness/text_shuffle3/itm/pairwise_accuracy", "robustness: ITM, text shuffle 3"),
)
FUSION_SENSITIVE = tuple(k for k, _ in METRICS if k.startswith("minimal_pairs/"))
TEXT_LEN = 64  # the longest built-in caption (3 objects) is 62 bytes + [CLS], [SEP]


def grid_config(design: str, seed: int = 0, quick: bool = False):
  """fusion_quality.quality_config at whole captions, with the grid's evaluators."""
  c = fusion_quality.quality_config(design, quick, seed)
  c.data.text_len = TEXT_LEN
  c.model.modalities.text.max_len = TEXT_LEN
  c.eval.evaluators = EVALUATORS
  c.eval.robustness_metrics = ("zero_shot/accuracy", "itm/pairwise_accuracy")
  c.eval.robustness_severities = (3,)
  c.checkpoint.keep = 1
  c.checkpoint.async_save = False
  return c


def run_dir(workdir: str, design: str, budget: float, seed: int) -> str:
  return os.path.join(workdir, design, f"b{budget:g}", f"s{seed}")


def train_and_score(design: str, budget: float, seed: int, flops: float, workdir: str,
                    quick: bool, log) -> Dict[str, Any]:
  """One grid cell: train (resuming) and evaluate; its record, cached in results.json."""
  d = run_dir(workdir, design, budget, seed)
  steps = max(2, int(round(budget / flops)))
  cfg = grid_config(design, seed, quick)
  cfg.total_steps = steps
  cfg.checkpoint.every_steps = steps
  t0 = time.perf_counter()
  out = trainer.train(cfg, d, log_to_stdout=False, devices=jax.devices()[:1])
  train_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  res = evaluate.run(checkpoint=os.path.join(ckpt_lib.checkpoint_dir(d), str(steps)),
                     devices=jax.devices()[:1])
  rec = {"design": design, "budget_flops": budget, "seed": seed, "steps": steps,
         "flops_per_step": flops, "train_flops": steps * flops, "train_s": train_s,
         "eval_s": time.perf_counter() - t0,
         "final_loss": float(out["metrics"].get("loss", float("nan"))),
         "results": {k: v for k, v in res.items() if isinstance(v, (int, float, str))}}
  records_lib.write(os.path.join(d, "results.json"), rec)
  log(f"{design} b{budget:g} s{seed}: {steps} steps, trained {train_s:.0f} s, evaluated "
      f"{rec['eval_s']:.0f} s, minimal pairs "
      f"{rec['results'].get('minimal_pairs/mean_accuracy', float('nan')):.3f}")
  return rec


def fill(designs: Sequence[str], budgets: Sequence[float], seeds: Sequence[int], workdir: str,
         quick: bool, max_runs: Optional[int], log) -> List[Dict[str, Any]]:
  """Every cached cell, training at most max_runs missing ones (None: all), seeds first so a
  partial grid has whole seed sets."""
  flops: Dict[str, float] = {}  # FLOPs per step, lowered once per design when one trains
  records, trained = [], 0
  for budget, seed, design in itertools.product(budgets, seeds, designs):
    rec = records_lib.read(os.path.join(run_dir(workdir, design, budget, seed), "results.json"))
    if rec is None and (max_runs is None or trained < max_runs):
      if design not in flops:
        flops[design] = fusion_quality.train_step_flops(grid_config(design, 0, quick))
      rec = train_and_score(design, budget, seed, flops[design], workdir, quick, log)
      trained += 1
    if rec is not None:
      records.append(rec)
  log(f"{len(records)} of {len(designs) * len(budgets) * len(seeds)} cells done "
      f"({trained} trained now)")
  return records


def cells(records, metric: str, budget: float) -> Dict[str, Dict[str, float]]:
  """{design: seed_stats.summarize of its seeds} for one metric at one budget."""
  by: Dict[str, List[float]] = {}
  for r in records:
    v = r["results"].get(metric)
    if r["budget_flops"] == budget and isinstance(v, (int, float)):
      by.setdefault(r["design"], []).append(float(v))
  return {d: seed_stats.summarize(v) for d, v in by.items()}


def metric_table(records, metric: str, label: str, budget: float) -> str:
  """One metric at one budget: each design's mean, range, interval and rank range, then which
  pairs separate and, for the closest tied pair, the seeds it would need."""
  cs = cells(records, metric, budget)
  if not cs:
    return ""
  ranks = seed_stats.rank_ranges(cs)
  pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
  lines = [f"**{label}** (`{metric}`), budget {budget / 1e12:g} TFLOPs", "",
           "| design | seeds | mean | range | 95% interval | rank |", "|---|---|---|---|---|---|"]
  for d, c in sorted(cs.items(), key=lambda kv: -kv[1].get("mean", 0)):
    r = ranks[d]
    lines.append(f"| {d} | {c['n']} | {pct(c['mean'])} | {pct(c['min'])}–{pct(c['max'])} | "
                 f"{pct(c['lo'])}–{pct(c['hi'])} | {r[0]}" + (f"–{r[1]}" if r[1] != r[0] else "")
                 + " |")
  pairs = [(a, b) for a, b in itertools.combinations(sorted(cs), 2)
           if cs[a]["n"] > 1 and cs[b]["n"] > 1]
  sep = [f"{a} {'>' if cs[a]['mean'] > cs[b]['mean'] else '<'} {b}" for a, b in pairs
         if seed_stats.separated(cs[a], cs[b])]
  lines += ["", f"Separated ({len(sep)} of {len(pairs)} pairs): "
            + ("; ".join(sep) if sep else "none; every pair is tied") + "."]
  tied = [(abs(cs[a]["mean"] - cs[b]["mean"]), a, b) for a, b in pairs
          if not seed_stats.separated(cs[a], cs[b]) and cs[a]["mean"] != cs[b]["mean"]]
  if tied:
    _, a, b = max(tied)
    lines.append(f"The widest tied gap ({a} vs {b}, {pct(abs(cs[a]['mean'] - cs[b]['mean']))} "
                 f"points) would need about {seed_stats.seeds_needed(cs[a], cs[b]):.0f} seeds "
                 "per design to separate at the measured spread.")
  return "\n".join(lines)


def curves(records, metric: str) -> Dict[str, Dict[str, Any]]:
  """Per design: the mean metric at each budget and the fitted a + b log10(train FLOPs)."""
  out = {}
  for d in sorted({r["design"] for r in records}):
    pts = []
    for b in sorted({r["budget_flops"] for r in records}):
      c = cells(records, metric, b).get(d)
      if c and c.get("n"):
        flops = np.mean([r["train_flops"] for r in records
                         if r["design"] == d and r["budget_flops"] == b])
        pts.append((float(flops), c["mean"], c["lo"], c["hi"]))
    if pts:
      a, slope = seed_stats.fit_log_curve([p[0] for p in pts], [p[1] for p in pts])
      out[d] = {"points": pts, "a": a, "per_decade": slope}
  return out


def plot(records, path: str, metrics=("zero_shot/accuracy", "minimal_pairs/mean_accuracy",
                                      "minimal_pairs/attribute_swap_accuracy")) -> str:
  """Quality against training FLOPs: each design's means with their intervals and its fitted
  curve, one panel per metric."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2))
  for ax, m in zip(np.atleast_1d(axes), metrics):
    for d, c in curves(records, m).items():
      x, y, lo, hi = (np.asarray(v) for v in zip(*c["points"]))
      line = ax.errorbar(x / 1e12, y, yerr=[y - lo, hi - y], fmt="o", capsize=2, label=d)
      xs = np.geomspace(x.min(), x.max(), 20) if len(x) > 1 else x
      ax.plot(xs / 1e12, c["a"] + c["per_decade"] * np.log10(xs), "-",
              color=line[0].get_color(), lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training TFLOPs")
    ax.set_ylabel(dict(METRICS).get(m, m))
    ax.grid(True, alpha=0.3)
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def report(records, out_dir: str, meta: Dict[str, Any]) -> str:
  """summary.md (returned), grid.json and quality_vs_flops.png in out_dir."""
  budgets = sorted({r["budget_flops"] for r in records})
  total = sum(r["train_flops"] for r in records)
  wall = sum(r["train_s"] + r["eval_s"] for r in records)
  lines = ["# Fusion grid", "", f"Command: `{meta['command']}`", "",
           f"Machine: {meta['processor'] or 'unknown CPU'}, jax device {meta['device']}. "
           f"{len(records)} runs, {total / 1e15:.4g} PFLOPs of training in all, "
           f"{wall / 60:.0f} min of training and evaluation.", "",
           "Intervals: percentile bootstrap of the mean over seeds (95%, 10,000 resamples). "
           "With few seeds they are narrower than the population's. Two designs are ordered "
           "only where the intervals separate; a rank range such as 2–5 means tied with the "
           "designs whose ranges overlap it.", ""]
  for m, label in METRICS:
    for b in budgets:
      t = metric_table(records, m, label, b)
      if t:
        lines += [t, ""]
  lines += ["## Quality against training FLOPs", "",
            "Least squares of the mean on log10(training FLOPs), per design: the change of "
            "the metric per 10x compute.", "",
            "| metric | design | per 10x compute (points) |", "|---|---|---|"]
  for m in ("zero_shot/accuracy", "minimal_pairs/mean_accuracy"):
    for d, c in curves(records, m).items():
      if len(c["points"]) > 1:
        lines.append(f"| {m} | {d} | {100 * c['per_decade']:+.1f} |")
  text = "\n".join(lines) + "\n"
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as fh:
    fh.write(text)
  records_lib.write(os.path.join(out_dir, "grid.json"), {"meta": meta, "runs": records})
  if records:
    plot(records, os.path.join(out_dir, "quality_vs_flops.png"))
  return text


def _define_flags():
  flags.DEFINE_string("workdir", "runs/fusion_grid", "Runs: <workdir>/<design>/b<B>/s<seed>.")
  flags.DEFINE_string("out", "runs/fusion_grid/report", "Folder for the report.")
  flags.DEFINE_list("designs", None, "Designs (default: every registered fusion).")
  flags.DEFINE_list("budgets_pflops", ["0.003", "0.01", "0.03"], "Budgets per run, PFLOPs.")
  flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of every cell.")
  flags.DEFINE_integer("max_runs", None, "Train at most this many missing runs now.")
  flags.DEFINE_boolean("report_only", False, "Train nothing; report what is cached.")
  flags.DEFINE_boolean("quick", False, "A dry run: width 32, 1 layer, batch 8, 40 eval examples.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  designs = tuple(f.designs or names())
  unknown = [d for d in designs if d not in names()]
  if unknown:
    raise app.UsageError(f"unknown design(s) {unknown}; choose from {', '.join(names())}")
  try:
    budgets = [float(b) * 1e15 for b in f.budgets_pflops]
    seeds = [int(s) for s in f.seeds]
  except ValueError as e:
    raise app.UsageError(f"--budgets_pflops and --seeds take numbers: {e}") from e
  log = lambda *a: print(*a, flush=True)  # noqa: E731
  records = fill(designs, budgets, seeds, f.workdir, f.quick, 0 if f.report_only else
                 f.max_runs, log)
  meta = {"command": " ".join(["python -m mmjax.bench.fusion_grid", *sys.argv[1:]]),
          "processor": processor(), "device": jax.devices()[0].device_kind,
          "designs": list(designs), "budgets_flops": budgets, "seeds": seeds}
  print(report(records, f.out, meta))


if __name__ == "__main__":
  _define_flags()
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
