"""The fusion sweep's report: log-log exponent fits, markdown tables, plots and output files.

The survey's cost string and asymptotic exponents beside each fit are the design's own
declarations (`cost`, `exponents` of its registered FusionDesign class).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict

import numpy as np

from mmjax import fusion as fusion_lib

TOKEN_KINDS = ("both", "b_only", "a_only")
CSV_KEYS = ("fusion", "kind", "n_a", "n_b", "n", "width", "depth_scale", "depth", "params",
            "forward_flops", "analytic_forward_flops", "analytic_over_xla", "attention_flops",
            "interaction_attention_flops", "survey_cost", "compile_s", "step_s",
            "train_mem_bytes", "batch_size", "quick")


def slope(xs, ys) -> float:
  """Least-squares slope of log y against log x (nan with fewer than two distinct x)."""
  xs, ys = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
  if len(xs) < 2 or np.ptp(xs) == 0:
    return float("nan")
  return float(np.polyfit(xs, ys, 1)[0])


def fit_exponents(rows, key="interaction_attention_flops") -> Dict[str, Dict[str, float]]:
  """Per fusion: slopes of `key` against N = N_A + N_B (both doubling), against N_B with N_A
  at its smallest, against N_A with N_B at its smallest, and of the step time (both)."""
  out = {}
  rows = [r for r in rows if r["kind"] in TOKEN_KINDS]
  for f in dict.fromkeys(r["fusion"] for r in rows):
    rs = [r for r in rows if r["fusion"] == f]
    both = [r for r in rs if r["kind"] == "both"]
    n_a0, n_b0 = min(r["n_a"] for r in rs), min(r["n_b"] for r in rs)
    b_only = [r for r in rs if r["kind"] in ("b_only", "both") and r["n_a"] == n_a0]
    a_only = [r for r in rs if r["kind"] in ("a_only", "both") and r["n_b"] == n_b0]
    res = {"both": slope([r["n"] for r in both], [r[key] for r in both]),
           "n_b": slope([r["n_b"] for r in b_only], [r[key] for r in b_only]),
           "n_a": slope([r["n_a"] for r in a_only], [r[key] for r in a_only])}
    st = [r for r in both if "step_s" in r]
    res["step_both"] = slope([r["n"] for r in st], [r["step_s"] for r in st]) if st else float("nan")
    out[f] = res
  return out


def fit_size_exponents(rows) -> Dict[str, Dict[str, float]]:
  """Per fusion: log-log slopes of params, forward FLOPs and attention FLOPs against the width
  (kind 'width') and against the depth multiplier (kind 'depth')."""
  out = {}
  for f in dict.fromkeys(r["fusion"] for r in rows if r["kind"] in ("width", "depth")):
    res = {}
    for kind, x in (("width", "width"), ("depth", "depth_scale")):
      rs = sorted((r for r in rows if r["fusion"] == f and r["kind"] == kind), key=lambda r: r[x])
      for key in ("params", "forward_flops", "attention_flops"):
        res[f"{key}_{kind}"] = slope([r[x] for r in rs], [r[key] for r in rs])
    out[f] = res
  return out


def markdown(rows, fits) -> str:
  """The token-sweep table: fitted exponents beside the survey's (at these N; asymptotic)."""
  pred = fit_exponents(rows, "survey_cost")
  lines = ["| fusion | survey cost / layer | exp. both: fit (survey formula at these N; "
           "asymptotic) | exp. N_B alone: fit (survey formula at these N; asymptotic) | "
           "exp. N_A alone: fit | step-time exp. both | params (largest) | "
           "attn GFLOPs/ex (largest) | fwd GFLOPs/ex (largest) | analytic / XLA fwd (range) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for f, e in fits.items():
    rs = [r for r in rows if r["fusion"] == f and r["kind"] in TOKEN_KINDS]
    big = max(rs, key=lambda r: r["n"])
    ratio = [r["analytic_over_xla"] for r in rs]
    design = fusion_lib.get(f)
    sb, sn = design.exponents
    p = pred[f]
    lines.append(
        f"| {f} | {design.cost} | {e['both']:.2f} ({p['both']:.2f}; {sb}) | "
        f"{e['n_b']:.2f} ({p['n_b']:.2f}; {sn}) | "
        f"{e['n_a']:.2f} | {e['step_both']:.2f} | {big['params']:,} | "
        f"{big['interaction_attention_flops'] / 1e9:.4f} | {big['forward_flops'] / 1e9:.4f} | "
        f"{min(ratio):.3f}-{max(ratio):.3f} |")
  return "\n".join(lines)


def markdown_sizes(rows, size_fits) -> str:
  """The width / depth table: log-log slopes of params and FLOPs."""
  lines = ["| fusion | params vs width | fwd FLOPs vs width | attn FLOPs vs width | "
           "params vs depth | fwd FLOPs vs depth | attn FLOPs vs depth | "
           "analytic / XLA fwd (range) |",
           "|---|---|---|---|---|---|---|---|"]
  for f, e in size_fits.items():
    ratio = [r["analytic_over_xla"] for r in rows
             if r["fusion"] == f and r["kind"] in ("width", "depth")]
    lines.append(f"| {f} | " + " | ".join(
        f"{e[f'{k}_{kind}']:.2f}" for kind in ("width", "depth")
        for k in ("params", "forward_flops", "attention_flops"))
                 + f" | {min(ratio):.3f}-{max(ratio):.3f} |")
  return "\n".join(lines)


def _loglog(ax, xlabel, ylabel, base=2):
  ax.set_xscale("log", base=base)
  ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, which="both", alpha=0.3)


def plot(rows, out_dir):
  """attention_flops.png and step_time.png (both doubling), width_depth_flops.png."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  paths = []
  fusions = list(dict.fromkeys(r["fusion"] for r in rows))
  for key, ylabel, fname in (("interaction_attention_flops", "interaction attention FLOPs / example",
                              "attention_flops.png"),
                             ("step_s", "train step time (s), 1 CPU device", "step_time.png")):
    if not any(key in r for r in rows):
      continue
    fig, ax = plt.subplots(figsize=(7, 5))
    for f in fusions:
      rs = sorted((r for r in rows if r["fusion"] == f and r["kind"] == "both" and key in r),
                  key=lambda r: r["n"])
      if rs:
        ax.plot([r["n"] for r in rs], [max(r[key], 1e-30) for r in rs], "o-", label=f)
    _loglog(ax, "tokens N = N_A + N_B (both doubling)", ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, fname))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
  if any(r["kind"] in ("width", "depth") for r in rows):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("width", "depth")):
      x = "width" if kind == "width" else "depth_scale"
      for f in fusions:
        rs = sorted((r for r in rows if r["fusion"] == f and r["kind"] == kind),
                    key=lambda r: r[x])
        if rs:
          ax.plot([r[x] for r in rs], [r["forward_flops"] for r in rs], "o-", label=f)
      _loglog(ax, "model width (head_dim fixed, MLP 4x)" if kind == "width"
              else "stage depth multiplier", "forward FLOPs / example (XLA)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "width_depth_flops.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
  return paths


def write(out_dir: str, rows, meta) -> Dict[str, Any]:
  """fusion_scaling.csv / .json, the plots and summary.md in out_dir; returns the fits, the
  markdown table and the plot paths."""
  fits = fit_exponents(rows)
  size_fits = fit_size_exponents(rows)
  table = markdown(rows, fits)
  if size_fits:
    table += (f"\n\nWidth {meta['widths']} (head_dim fixed, MLP 4x width) and stage depth x "
              f"{meta['depth_scales']} at {meta['wd_size']} tokens per modality: log-log "
              "slopes\n\n" + markdown_sizes(rows, size_fits))
  with open(os.path.join(out_dir, "fusion_scaling.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=CSV_KEYS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  fusions = list(dict.fromkeys(r["fusion"] for r in rows))
  with open(os.path.join(out_dir, "fusion_scaling.json"), "w") as fh:
    json.dump({"meta": meta, "rows": rows, "exponents": fits,
               "exponents_total_attention": fit_exponents(rows, "attention_flops"),
               "exponents_survey_formula_at_these_n": fit_exponents(rows, "survey_cost"),
               "exponents_width_depth": size_fits,
               "survey_cost": {f: fusion_lib.get(f).cost for f in fusions},
               "survey_exponent": {f: list(fusion_lib.get(f).exponents) for f in fusions}},
              fh, indent=1)
  plots = plot(rows, out_dir)
  with open(os.path.join(out_dir, "summary.md"), "w") as fh:
    fh.write(f"Sizes {meta['sizes']}, batch {meta['batch_size']}, quick={meta['quick']}, device "
             f"{meta['device']}, sweep wall {meta['wall_s']:.0f} s\n\n{table}\n")
  return {"exponents": fits, "size_exponents": size_fits, "table": table, "plots": plots}
