"""The fusion sweep itself: one config per sweep point, its measurements, and the run.

`sweep_config` builds the config of one point, `measure` records one row, `run` sweeps every
design asked for (default: every registered one, mmjax.fusion.names()) and writes the results
through fusion_report. The module docstring of mmjax.bench.fusion describes the sweep.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import jax

from mmjax import configure, models, objectives, sharding, summary, train_lib
from mmjax import fusion as fusion_lib
from mmjax.bench import fusion_cost, fusion_report
from mmjax.bench.step import synthetic_batch
from mmjax.perf import memory_bytes, time_steps


def shipped_config(name: str):
  """mmjax/configs/fusion/<name>.py's config, or None for a design that ships none."""
  module = f"mmjax.configs.fusion.{name}"
  if importlib.util.find_spec(module) is None:
    return None
  return importlib.import_module(module).get_config()


def _map_depth(v, fn):
  """fn on a stage depth, or on each modality's depth where it is given per modality."""
  if hasattr(v, "keys"):
    return {k: fn(int(v[k])) for k in v.keys()}
  return fn(int(v))


def valid_loss_weights(config) -> None:
  """Zero the loss weights the config's design cannot serve: those of every objective that
  requires a design capability the design lacks (Objective.requires: itm without a joint
  output, contrastive / sigmoid without unimodal towers)."""
  model = configure.resolve_model(config)
  design, lw = fusion_lib.design_of(model), config.loss_weights
  drop = [o.name for o in objectives.registered(objectives.names())
          if not all(objectives.capability(design, c, model.names) for c in o.requires)]
  for k in drop:
    if k in lw:
      lw[k] = 0.0


def sweep_config(base, name: str, n_a: int, n_b: int, quick: bool, batch_size: int,
                 width: int = 0, depth_scale: int = 1):
  """`base` with fusion `name` and an image of about n_a patch tokens and text of n_b tokens.
  Stage depths and loss weights come from mmjax/configs/fusion/<name>.py; a design without
  one keeps the base's depths, with the loss weights it cannot serve set to 0. Quick mode:
  width 32, at most one layer per stage. `width` > 0 rescales the model (head_dim kept, MLP
  4x), `depth_scale` multiplies every stage depth."""
  c = base.copy_and_resolve_references()
  ref = shipped_config(name)
  c.model.fusion = name
  if ref is not None:
    c.model.depth = ref.model.depth
    c.loss_weights = ref.loss_weights
  c.model.early_sum_align = "pad"  # N_A and N_B vary apart (read only by designs that sum)
  if quick:
    c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 2, 64, 32
  if width:
    head_dim = c.model.width // c.model.heads
    c.model.width, c.model.heads, c.model.mlp_dim = width, max(width // head_dim, 1), 4 * width
  cap = (lambda k: min(k, 1)) if quick else (lambda k: k)
  for k in list(c.model.depth.keys()):
    c.model.depth[k] = _map_depth(c.model.depth[k], lambda v: cap(v) * depth_scale)
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
  if ref is None:
    valid_loss_weights(c)
  return c


def measure(config, steps: int, train: bool = True) -> Dict[str, Any]:
  """One row: parameters, forward FLOPs per example (XLA; analytic), attention-core FLOPs
  (total; interaction), the survey cost at the row's token counts, and with `train` the
  train step's compile time, median step time and compiled memory on one device."""
  mc = configure.resolve_model(config)
  design = fusion_lib.design_of(mc)
  model = models.build_model(mc)
  batch1 = models.dummy_batch(mc, 1)
  params = {"params": summary.param_shapes(model, batch1)["params"]}
  tokens = configure.token_counts(mc)
  n = {m: tokens[m] for m in mc.names}
  counted = config.copy_and_resolve_references()
  counted.attention.impl = "xla"  # the chunked kernel's loop body is counted once by XLA
  count_model = models.build_model(counted)
  by_path = summary.sown_attention_flops_by_path(count_model, params, batch1)
  f = mc.fusion
  row = {"fusion": f.name,
         "params": summary.count_params(params)["total"],
         "forward_flops": summary.forward_flops(count_model, params, batch1),
         "attention_flops": sum(by_path.values()),
         "interaction_attention_flops": fusion_cost.interaction_attention_flops(design, by_path),
         "width": mc.block.width,
         "depth": max(dict(f.unimodal_depth).values(), default=0) + f.joint_depth
                  + f.post_depth + f.cross_depth}
  row["n_a"], row["n_b"] = n[mc.names[0]], n[mc.names[1]]
  row["n"] = sum(n.values())
  row["analytic_forward_flops"] = fusion_cost.analytic_forward_flops(mc, n)
  row["analytic_over_xla"] = row["analytic_forward_flops"] / row["forward_flops"]
  row["survey_cost"] = fusion_cost.survey_cost(mc, n)
  if train:
    cfg = configure.resolve(config)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    tx, schedule = train_lib.make_optimizer(cfg)
    state, shard = train_lib.create_state(cfg, model, tx, mesh)
    step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
    batch = jax.device_put(synthetic_batch(cfg), sharding.batch_sharding(mesh))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    row["compile_s"] = time.perf_counter() - t0
    row["train_mem_bytes"] = memory_bytes(compiled)
    with jax.set_mesh(mesh):
      _, _, row["step_s"] = time_steps(compiled, state, batch, steps, warmup=1, repeats=1)
    row["batch_size"] = cfg.batch_size
  return row


def sweep_points(sizes: List[int], a_only: bool = True):
  """(n_a, n_b, kind): both together, then N_B alone and N_A alone from the smallest size."""
  pts = [(s, s, "both") for s in sizes]
  pts += [(sizes[0], s, "b_only") for s in sizes[1:]]
  if a_only:
    pts += [(s, sizes[0], "a_only") for s in sizes[1:]]
  return pts


def run(base, out_dir: str, quick: bool, sizes=None, batch_size=None, steps=None,
        fusions: Optional[Sequence[str]] = None, train=None, log=None, widths=(),
        depth_scales=(), wd_size: int = 256) -> Dict[str, Any]:
  """Sweep `fusions` (default: every registered design) and write the results to out_dir."""
  fusions = tuple(fusions) if fusions else fusion_lib.names()
  for f in fusions:
    fusion_lib.get(f)  # an unknown name fails here, before anything compiles
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
      cfg = sweep_config(base, f, n_a, n_b, quick, batch_size)
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
      cfg = sweep_config(base, f, wd_size, wd_size, quick, batch_size, width, scale)
      r = measure(cfg, steps, train=False)
      r.update(kind=kind, depth_scale=scale, quick=quick)
      rows.append(r)
      log(f"{f:18s} {kind} width={r['width']} depth x{scale} params={r['params']:,} "
          f"fwd={r['forward_flops']:.3e} analytic/xla={r['analytic_over_xla']:.3f}", flush=True)
  meta = {"device": jax.devices()[0].device_kind, "quick": quick, "sizes": sizes, "train": train,
          "batch_size": batch_size, "steps": steps, "widths": list(widths),
          "depth_scales": list(depth_scales), "wd_size": wd_size, "fusions": list(fusions),
          "wall_s": time.perf_counter() - t_start}
  return {"rows": rows, "meta": meta, **fusion_report.write(out_dir, rows, meta)}
