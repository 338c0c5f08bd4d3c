"""Fusion scaling sweep: how each cross-modal interaction's cost grows with token counts.

  python -m mmjax.bench.fusion [--config=configs/default.py] [--quick] [--out=DIR]
      [--sizes=64,128,256,512,1024] [--batch_size=8] [--timed_steps=3]
      [--widths=64,128,256] [--depth_scales=1,2,4] [--wd_size=256]

For every fusion in mmjax.fusion.FUSIONS and every point of a token sweep (image tokens N_A and
text length N_B: both together, and each alone from the smallest size) it records parameters,
forward FLOPs per example (XLA cost analysis, and the analytic matmul count of
`analytic_forward_flops`), attention-core FLOPs per example (sown by every attention,
summary.py; total and "interaction" = without the unimodal pre-towers, see below),
train-step compile time, train-step time (median of --timed_steps steps on one device, synthetic
batch, train_lib's real step) and the train step's compiled memory (argument + output + temp -
aliased). A second sweep at --wd_size tokens per modality scales the width (head_dim fixed,
MLP 4x width) and every stage depth (x --depth_scales). Writes fusion_scaling.csv / .json,
log-log plots and summary.md to --out, and prints the markdown tables (fitted exponents beside
SPEC section 2's cost column; width and depth exponents).

FLOPs are counted with attention.impl=xla: `auto` picks the chunked kernel for long sequences,
a loop whose body XLA's cost analysis counts once. The train step keeps the config's impl.

Exponents are log-log slopes of attention FLOPs against actual token counts ([CLS] included):
"both" fits against N = N_A + N_B with N_A and N_B doubling together; "N_B" fits against N_B with
N_A fixed. The interaction count leaves out the unimodal towers (`tower_*`) that precede
early_sum / early_concat / cross_attention / cross_to_concat / bottleneck / hier_one_to_multi
in our configs (they are a prelude, not the design SPEC's column describes); for dual_encoder and
hier_multi_to_one the towers are the design and count.

Quick mode: two tiny sizes, width 32, one layer per stage, batch 2.
"""
from __future__ import annotations

import csv
import importlib
import json
import math
import os
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mmjax import models, sharding, summary, train_lib
from mmjax.bench.step import synthetic_batch
from mmjax.fusion import FUSIONS
from mmjax.perf import time_steps

SPEC_COST = {
    "early_sum": "O(N^2), N = N_A = N_B",
    "early_concat": "O((N_A+N_B)^2)",
    "hier_multi_to_one": "O(N_A^2 + N_B^2) then O((N_A+N_B)^2)",
    "hier_one_to_multi": "O((N_A+N_B)^2) then O(N_A^2 + N_B^2)",
    "cross_attention": "O(N_A * N_B)",
    "cross_to_concat": "O(N_A * N_B) then O((N_A+N_B)^2)",
    "dual_encoder": "O(N_A^2 + N_B^2)",
    "bottleneck": "O((N_A+B)^2 + (N_B+B)^2)",
}
# Asymptotic exponents SPEC's column implies: (both doubling, N_B alone with N_A fixed).
SPEC_EXPONENT = {
    "early_sum": (2, 2), "early_concat": (2, 2), "hier_multi_to_one": (2, 2),
    "hier_one_to_multi": (2, 2), "cross_attention": (2, 1), "cross_to_concat": (2, 2),
    "dual_encoder": (2, 2), "bottleneck": (2, 2),
}


def spec_cost(fusion: str, n_a: float, n_b: float, depth, bottlenecks: int = 4) -> float:
  """SPEC section 2's cost column as a formula, weighted by the config's stage depths."""
  u, j, p, x = (int(depth.get(k, 0)) for k in ("unimodal", "joint", "post", "cross"))
  sq = n_a ** 2 + n_b ** 2
  return {"early_sum": j * max(n_a, n_b) ** 2,
          "early_concat": j * (n_a + n_b) ** 2,
          "hier_multi_to_one": u * sq + j * (n_a + n_b) ** 2,
          "hier_one_to_multi": j * (n_a + n_b) ** 2 + p * sq,
          "cross_attention": x * 2 * n_a * n_b,
          "cross_to_concat": x * 2 * n_a * n_b + j * (n_a + n_b) ** 2,
          "dual_encoder": u * sq,
          "bottleneck": j * ((n_a + bottlenecks) ** 2 + (n_b + bottlenecks) ** 2)}[fusion]


def _block(n, d, m):
  """Self-attention block on n tokens: 8nd^2 (q, k, v, out) + 4n^2d (QK^T, PV) + 4ndm (MLP)."""
  return 8 * n * d * d + 4 * n * n * d + 4 * n * d * m


def _cross_block(nq, nk, d, m, mode):
  """Cross block, queries from nq tokens, keys/values from nk: 4nq d^2 + 4nk d^2 + 4nq nk d +
  4nq d m, plus the self-attention sublayer 8nq d^2 + 4nq^2 d when mode is self_cross."""
  f = 4 * nq * d * d + 4 * nk * d * d + 4 * nq * nk * d + 4 * nq * d * m
  return f + (8 * nq * d * d + 4 * nq * nq * d if mode == "self_cross" else 0)


def analytic_forward_flops(config, n_a: int, n_b: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of model.apply (embed + encode + interact, no heads) per
  example, for two modalities of n_a and n_b tokens ([CLS] included). Per modality m at its
  tower width d_m (model width D, MLP M unless the modality sets its own): patch projection
  2 (n_m - [CLS]) P d_m (P = values per patch; text is a gather: 0), tower layers Tf(n_m), and
  2 n_m d_m D where tower_proj maps d_m to D. Then the design's stages, with Tf(n) =
  _block(n) and cross(nq | nk) = _cross_block(nq, nk): early_sum Tf(max n) per joint layer,
  early_concat / hier_multi_to_one Tf(n_a + n_b), hier_one_to_multi that then Tf(n_a) + Tf(n_b)
  per post layer, cross_attention cross(n_a | n_b) + cross(n_b | n_a) per cross layer,
  cross_to_concat those then Tf(n_a + n_b), bottleneck Tf(n_a + B) + Tf(n_b + B) per layer,
  dual_encoder nothing after the towers."""
  mc = config.model
  fcfg = models.fusion_config(mc)
  blk = models.block_config(mc)
  own = dict(models.tower_blocks(mc, blk))
  d, m = blk.width, blk.mlp_dim
  n = dict(zip(mc.modalities, (n_a, n_b)))
  f = 0.0
  for mod, o in mc.modalities.items():
    tb = own.get(mod, blk)
    if o.kind in models.PATCH_KINDS:
      patches = n[mod] - (1 if o.get("add_cls", True) else 0)
      f += 2 * patches * (int(np.prod(o.input_shape)) // patches) * tb.width
    elif o.kind != "text":
      raise ValueError(f"analytic_forward_flops: no count for modality kind {o.kind!r}")
    f += fcfg.depth_of(mod) * _block(n[mod], tb.width, tb.mlp_dim)
    if tb.width != d and fcfg.name != "dual_encoder":
      f += 2 * n[mod] * tb.width * d
  tf = lambda t: _block(t, d, m)
  j, p, x, nb = fcfg.joint_depth, fcfg.post_depth, fcfg.cross_depth, fcfg.num_bottlenecks
  cross = lambda: x * (_cross_block(n_a, n_b, d, m, fcfg.cross_mode)
                       + _cross_block(n_b, n_a, d, m, fcfg.cross_mode))
  f += {"early_sum": lambda: j * tf(max(n_a, n_b)),
        "early_concat": lambda: j * tf(n_a + n_b),
        "hier_multi_to_one": lambda: j * tf(n_a + n_b),
        "hier_one_to_multi": lambda: j * tf(n_a + n_b) + p * (tf(n_a) + tf(n_b)),
        "cross_attention": cross,
        "cross_to_concat": lambda: cross() + j * tf(n_a + n_b),
        "dual_encoder": lambda: 0.0,
        "bottleneck": lambda: j * (tf(n_a + nb) + tf(n_b + nb))}[fcfg.name]()
  return float(f)


TOWERS_ARE_DESIGN = ("dual_encoder", "hier_multi_to_one")


def fusion_config(base, name: str, n_a: int, n_b: int, quick: bool, batch_size: int,
                  width: int = 0, depth_scale: int = 1):
  """`base` with fusion `name` (depths and loss weights from configs/fusion/<name>.py) and an
  image of about n_a patch tokens and text of n_b tokens; `width` > 0 rescales the model
  (head_dim kept, MLP 4x), `depth_scale` multiplies every stage depth."""
  c = base.copy_and_resolve_references()
  ref = importlib.import_module(f"configs.fusion.{name}").get_config()
  c.model.fusion = name
  c.model.depth = ref.model.depth
  c.loss_weights = ref.loss_weights
  if name == "early_sum":
    c.model.early_sum_align = "pad"
  if quick:
    c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 2, 64, 32
    for k in list(c.model.depth.keys()):
      c.model.depth[k] = min(int(c.model.depth[k]), 1)
  if width:
    head_dim = c.model.width // c.model.heads
    c.model.width, c.model.heads, c.model.mlp_dim = width, max(width // head_dim, 1), 4 * width
  for k in list(c.model.depth.keys()):
    c.model.depth[k] = int(c.model.depth[k]) * depth_scale
  c.batch_size = batch_size
  c.grad_accum_steps = 1
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  mods = {}
  for m, o in c.model.modalities.items():
    o = dict(o)
    if o["kind"] == "image":
      h = 2 ** int(math.floor(math.log2(n_a) / 2))
      w = max(n_a // h, 1)
      p = o.get("patch", 4)
      p = p if isinstance(p, int) else p[0]
      o.update(grid=(h, w), input_shape=(h * p, w * p, 3))
    elif o["kind"] == "text":
      o.update(max_len=n_b)
    mods[m] = o
  c.model.modalities = mods
  return c


def attention_split(model, params, batch) -> Dict[str, float]:
  """Per-example attention-core FLOPs: total and per sown path."""
  shapes, batch_shapes = summary._shape_tree(params), summary._shape_tree(batch)  # pylint: disable=protected-access

  def fn():
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)
    _, state = model.apply(jax.tree.map(zeros, shapes), jax.tree.map(zeros, batch_shapes),
                           mutable=["attn_flops"])
    flat = jax.tree_util.tree_flatten_with_path(state.get("attn_flops", {}))[0]
    return {jax.tree_util.keystr(p): jnp.sum(x) for p, x in flat}
  return {k: float(v) for k, v in jax.jit(fn)().items()}


def measure(config, steps: int, train: bool = True) -> Dict[str, Any]:
  model = models.build_model(config)
  batch1 = models.dummy_batch(config, 1)
  variables = summary.param_shapes(model, batch1)
  params = {"params": variables["params"]}
  tokens = {m: summary._num_tokens(model, params, batch1, m)  # pylint: disable=protected-access
            for m in config.model.modalities}
  counted = config.copy_and_resolve_references()
  counted.attention.impl = "xla"  # see the module docstring: chunked's loop is counted once
  count_model = models.build_model(counted)
  split = attention_split(count_model, params, batch1)
  towers = sum(v for k, v in split.items() if "'tower_" in k)
  total = sum(split.values())
  inter = total if config.model.fusion in TOWERS_ARE_DESIGN else total - towers
  row = {"fusion": config.model.fusion,
         "params": summary.count_params(params)["total"],
         "forward_flops": summary.forward_flops(count_model, params, batch1),
         "attention_flops": total, "interaction_attention_flops": inter,
         "width": int(config.model.width),
         "depth": sum(int(v) for v in config.model.depth.values())}
  mods = list(config.model.modalities)
  row["n_a"], row["n_b"] = tokens[mods[0]], tokens[mods[1]]
  row["analytic_forward_flops"] = analytic_forward_flops(config, row["n_a"], row["n_b"])
  row["analytic_over_xla"] = row["analytic_forward_flops"] / row["forward_flops"]
  row["n"] = row["n_a"] + row["n_b"]
  row["spec_cost"] = spec_cost(config.model.fusion, row["n_a"], row["n_b"], config.model.depth,
                               int(config.model.get("num_bottlenecks", 4)))
  if train:
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    tx, schedule = train_lib.make_optimizer(config)
    state, shard = train_lib.create_state(config, model, tx, mesh)
    step = train_lib.make_train_step(config, model, tx, schedule, mesh, shard)
    batch = jax.device_put(synthetic_batch(config), sharding.batch_sharding(mesh))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    row["train_mem_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes +
                                 mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    with jax.set_mesh(mesh):
      _, _, row["step_s"] = time_steps(compiled, state, batch, steps, warmup=1)
    row["batch_size"] = config.batch_size
  return row


TOKEN_KINDS = ("both", "b_only", "a_only")


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


def sweep_points(sizes: List[int], a_only: bool = True):
  """(n_a, n_b, kind): both together, then N_B alone and N_A alone from the smallest size."""
  pts = [(s, s, "both") for s in sizes]
  pts += [(sizes[0], s, "b_only") for s in sizes[1:]]
  if a_only:
    pts += [(s, sizes[0], "a_only") for s in sizes[1:]]
  return pts


def slope(xs, ys) -> float:
  xs, ys = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
  if len(xs) < 2 or np.ptp(xs) == 0:
    return float("nan")
  return float(np.polyfit(xs, ys, 1)[0])


def fit_exponents(rows, key="interaction_attention_flops") -> Dict[str, Dict[str, float]]:
  out = {}
  rows = [r for r in rows if r["kind"] in TOKEN_KINDS]
  for f in dict.fromkeys(r["fusion"] for r in rows):
    rs = [r for r in rows if r["fusion"] == f]
    both = [r for r in rs if r["kind"] == "both"]
    n_a0 = min(r["n_a"] for r in rs)
    b_only = [r for r in rs if r["kind"] in ("b_only", "both") and r["n_a"] == n_a0]
    a_only_base = min(r["n_b"] for r in rs)
    a_only = [r for r in rs if r["kind"] in ("a_only", "both") and r["n_b"] == a_only_base]
    res = {"both": slope([r["n"] for r in both], [r[key] for r in both]),
           "n_b": slope([r["n_b"] for r in b_only], [r[key] for r in b_only]),
           "n_a": slope([r["n_a"] for r in a_only], [r[key] for r in a_only])}
    st = [r for r in both if "step_s" in r]
    res["step_both"] = slope([r["n"] for r in st], [r["step_s"] for r in st]) if st else float("nan")
    out[f] = res
  return out


def markdown(rows, fits) -> str:
  pred = fit_exponents(rows, "spec_cost")
  lines = ["| fusion | SPEC cost / layer | exp. both: fit (SPEC at these N; asymptotic) | "
           "exp. N_B alone: fit (SPEC at these N; asymptotic) | exp. N_A alone: fit | "
           "step-time exp. both | params (largest) | "
           "attn GFLOPs/ex (largest) | fwd GFLOPs/ex (largest) | analytic / XLA fwd (range) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for f, e in fits.items():
    rs = [r for r in rows if r["fusion"] == f and r["kind"] in TOKEN_KINDS]
    big = max(rs, key=lambda r: r["n"])
    ratio = [r["analytic_over_xla"] for r in rs]
    sb, sn = SPEC_EXPONENT[f]
    p = pred[f]
    lines.append(
        f"| {f} | {SPEC_COST[f]} | {e['both']:.2f} ({p['both']:.2f}; {sb}) | "
        f"{e['n_b']:.2f} ({p['n_b']:.2f}; {sn}) | "
        f"{e['n_a']:.2f} | {e['step_both']:.2f} | {big['params']:,} | "
        f"{big['interaction_attention_flops'] / 1e9:.4f} | {big['forward_flops'] / 1e9:.4f} | "
        f"{min(ratio):.3f}-{max(ratio):.3f} |")
  return "\n".join(lines)


def markdown_sizes(rows, size_fits) -> str:
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


def plot(rows, out_dir):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  paths = []
  for key, ylabel, fname in (("interaction_attention_flops", "interaction attention FLOPs / example",
                              "attention_flops.png"),
                             ("step_s", "train step time (s), 1 CPU device", "step_time.png")):
    if not any(key in r for r in rows):
      continue
    fig, ax = plt.subplots(figsize=(7, 5))
    for f in dict.fromkeys(r["fusion"] for r in rows):
      rs = sorted((r for r in rows if r["fusion"] == f and r["kind"] == "both" and key in r),
                  key=lambda r: r["n"])
      if rs:
        ax.plot([r["n"] for r in rs], [max(r[key], 1e-30) for r in rs], "o-", label=f)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens N = N_A + N_B (both doubling)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, fname)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
  if any(r["kind"] in ("width", "depth") for r in rows):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("width", "depth")):
      for f in dict.fromkeys(r["fusion"] for r in rows):
        x = "width" if kind == "width" else "depth_scale"
        rs = sorted((r for r in rows if r["fusion"] == f and r["kind"] == kind),
                    key=lambda r: r[x])
        if rs:
          ax.plot([r[x] for r in rs], [r["forward_flops"] for r in rs], "o-", label=f)
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_xlabel("model width (head_dim fixed, MLP 4x)" if kind == "width"
                    else "stage depth multiplier")
      ax.set_ylabel("forward FLOPs / example (XLA)")
      ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, "width_depth_flops.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
  return paths


def run(base, out_dir: str, quick: bool, sizes=None, batch_size=None, steps=None,
        fusions=FUSIONS, train=None, log=None, widths=(), depth_scales=(),
        wd_size: int = 256) -> Dict[str, Any]:
  sizes = sizes or ([16, 32] if quick else [64, 128, 256, 512, 1024])
  batch_size = batch_size or (2 if quick else 8)
  steps = steps or (2 if quick else 3)
  train = train or ("none" if quick else "both")
  log = log or (lambda *a, **k: print(*a, **k))
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  t_start = time.perf_counter()
  for f in fusions:
    for n_a, n_b, kind in sweep_points(sizes, a_only=not quick):
      cfg = fusion_config(base, f, n_a, n_b, quick, batch_size)
      r = measure(cfg, steps, train=train == "all" or (train == "both" and kind == "both"))
      r.update(kind=kind, depth_scale=1, quick=quick)
      rows.append(r)
      msg = (f"{f:18s} N_A={r['n_a']:5d} N_B={r['n_b']:5d} {kind:6s} "
             f"attn={r['interaction_attention_flops']:.3e} fwd={r['forward_flops']:.3e}")
      if "step_s" in r:
        msg += (f" compile={r['compile_s']:.2f}s step={r['step_s'] * 1e3:.1f}ms "
                f"mem={r['train_mem_bytes'] / 2**20:.1f}MiB")
      log(msg, flush=True)
    points = [(w, 1, "width") for w in widths] + [(0, s, "depth") for s in depth_scales]
    for width, scale, kind in points:
      cfg = fusion_config(base, f, wd_size, wd_size, quick, batch_size, width, scale)
      r = measure(cfg, steps, train=False)
      r.update(kind=kind, depth_scale=scale, quick=quick)
      rows.append(r)
      log(f"{f:18s} {kind} width={r['width']} depth x{scale} params={r['params']:,} "
          f"fwd={r['forward_flops']:.3e} analytic/xla={r['analytic_over_xla']:.3f}", flush=True)
  fits = fit_exponents(rows)
  size_fits = fit_size_exponents(rows)
  fits_total = fit_exponents(rows, "attention_flops")
  fits_spec = fit_exponents(rows, "spec_cost")
  table = markdown(rows, fits)
  if size_fits:
    table += (f"\n\nWidth {list(widths)} (head_dim fixed, MLP 4x width) and stage depth x "
              f"{list(depth_scales)} at {wd_size} tokens per modality: log-log slopes\n\n"
              + markdown_sizes(rows, size_fits))
  keys = ["fusion", "kind", "n_a", "n_b", "n", "width", "depth_scale", "depth", "params",
          "forward_flops", "analytic_forward_flops", "analytic_over_xla", "attention_flops",
          "interaction_attention_flops", "spec_cost", "compile_s", "step_s", "train_mem_bytes",
          "batch_size", "quick"]
  with open(os.path.join(out_dir, "fusion_scaling.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  meta = {"device": jax.devices()[0].device_kind, "quick": quick, "sizes": sizes, "train": train,
          "batch_size": batch_size, "steps": steps, "widths": list(widths),
          "depth_scales": list(depth_scales), "wd_size": wd_size,
          "wall_s": time.perf_counter() - t_start}
  with open(os.path.join(out_dir, "fusion_scaling.json"), "w") as fh:
    json.dump({"meta": meta, "rows": rows, "exponents": fits,
               "exponents_total_attention": fits_total,
               "exponents_spec_formula_at_these_n": fits_spec,
               "exponents_width_depth": size_fits, "spec_cost": SPEC_COST,
               "spec_exponent": SPEC_EXPONENT}, fh, indent=1)
  plots = plot(rows, out_dir)
  with open(os.path.join(out_dir, "summary.md"), "w") as fh:
    fh.write(f"Sizes {sizes}, batch {batch_size}, quick={quick}, device "
             f"{meta['device']}, sweep wall {meta['wall_s']:.0f} s\n\n{table}\n")
  return {"rows": rows, "exponents": fits, "size_exponents": size_fits, "table": table,
          "plots": plots, "meta": meta}


def _define_flags():
  """Defined at run time; `config` is shared with mmjax.bench.step (imported above), which
  defines it on import with the same default."""
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file("config", "configs/default.py", "Base config.",
                                    lock_config=False)
  flags.DEFINE_boolean("quick", False, "Two tiny sizes, width 32, one layer per stage.")
  flags.DEFINE_string("out", "docs/fusion_scaling", "Output directory.")
  flags.DEFINE_list("sizes", None, "Token sizes (default 16,32 quick; 64..1024 full).")
  flags.DEFINE_integer("batch_size", None, "Train-step batch (2 quick, 8 full).")
  flags.DEFINE_integer("timed_steps", None, "Timed steps (median; 2 quick, 3 full).")
  flags.DEFINE_list("fusions", list(FUSIONS), "Fusions to sweep.")
  flags.DEFINE_list("widths", [], "Widths to sweep at --wd_size tokens (head_dim kept, MLP 4x).")
  flags.DEFINE_list("depth_scales", [], "Multipliers of every stage depth, at --wd_size tokens.")
  flags.DEFINE_integer("wd_size", 256, "Tokens per modality of the width/depth sweep.")
  flags.DEFINE_enum("train", None, ["all", "both", "none"],
                    "Which points compile and time the train step (each compile is ~15 s on "
                    "2 loaded CPU cores): all, both (N_A and N_B doubling; full default), none "
                    "(quick default: FLOPs, params only).")


def main(argv):
  del argv
  f = flags.FLAGS
  sizes = [int(s) for s in f.sizes] if f.sizes else None
  res = run(f.config, f.out, f.quick, sizes, f.batch_size, f.timed_steps, tuple(f.fusions),
            f.train, widths=[int(w) for w in f.widths],
            depth_scales=[int(s) for s in f.depth_scales], wd_size=f.wd_size)
  print(res["table"])


if __name__ == "__main__":
  _define_flags()
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
