"""mmjax vs open_clip: the same CLIP train step, float32, on this machine, back to back.

  .venv/bin/python -m mmjax.bench.versus --model=vit_b16 --batch=8 [--steps=3] [--warmup=3]
      [--xla_flags='--xla_cpu_use_xnnpack=true ...'] [--set=model.remat=dots ...]
      [--only=mmjax|torch|matmul] [--torch_malloc]

1. mmjax: configs/clip_vit_b16.py made to match open_clip's ViT-B-16 (text 77 tokens, vocab
   49,408, causal text tower, exact GELU, LayerNorm eps 1e-5), contrastive loss only, AdamW
   without clipping; train_lib's jitted step on synthetic_batch (mmjax.bench.step).
2. open_clip: ViT-B-16 at random init, forward + ClipLoss + backward + AdamW, in a subprocess
   of the reference venv (.venv-ref; mmjax/bench/versus_torch.py, which never imports jax).
3. Each framework's float32 2048^3 matmul peak (best of 5), measured in the same run, so the
   ratio of peaks stands next to the ratio of step times.

mmjax's CPU defaults (mmjax.platforms.apply_cpu_defaults, which main() applies after --xla_flags:
an XLA flag, and glibc malloc settings applied in its own process) are in effect unless turned off (MMJAX_CPU_XLA_DEFAULTS=0,
MMJAX_CPU_MALLOC_DEFAULTS=0); --torch_malloc gives the open_clip process the same malloc settings
(as MALLOC_* environment variables), for an equal-footing comparison.
--xla_flags is added to XLA_FLAGS before jax is imported. Step time: the median of the timed
steps after warmup. The last stdout line is one JSON object: mmjax_step_s, torch_step_s,
ratio (torch_step_s / mmjax_step_s; > 1 means mmjax is faster), mmjax_matmul_gflops,
torch_matmul_gflops, matmul_ratio, xla_flags, losses, processor (model and ISA), the jax, torch
and open_clip versions, ...
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from mmjax import cli, platforms  # no jax import before --xla_flags is applied

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
# --model -> (mmjax config module, open_clip model name)
MODELS = {"vit_b16": ("mmjax.configs.clip_vit_b16", "ViT-B-16")}
REF_FIX = "make .venv-ref/.stamp"


class VersusError(Exception):
  pass


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="vit_b16", choices=sorted(MODELS))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3, help="timed steps")
  p.add_argument("--warmup", type=int, default=3,
                 help="untimed steps after compilation (on a 2-core Xeon the heap took three "
                      "steps to settle)")
  p.add_argument("--xla_flags", default="", help="added to XLA_FLAGS before jax is imported")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="mmjax config override, e.g. model.remat=dots (repeatable)")
  p.add_argument("--only", default="", choices=["", "mmjax", "torch", "matmul"],
                 help="run one side only (matmul: both matmul peaks, no steps)")
  p.add_argument("--torch_python", default="",
                 help="python of the reference side (default .venv-ref/bin/python, else this "
                      "one when it imports open_clip)")
  p.add_argument("--torch_malloc", action="store_true",
                 help="run open_clip with the glibc malloc settings mmjax sets for itself")
  p.add_argument("--timeout", type=float, default=3600.0, help="torch subprocess timeout (s)")
  return p.parse_args(argv)


# ---------------------------------------------------------------------------- torch side

def torch_python(explicit: str = "") -> str:
  if explicit:
    if not os.path.exists(explicit):
      raise VersusError(f"--torch_python={explicit} does not exist; pass a python with torch "
                        f"and open_clip, or build the reference venv with `{REF_FIX}`")
    return explicit
  ref = os.path.join(_ROOT, ".venv-ref", "bin", "python")
  if os.path.exists(ref):
    return ref
  try:
    subprocess.run([sys.executable, "-c", "import torch, open_clip"], check=True,
                   capture_output=True, timeout=300)
    return sys.executable
  except (subprocess.SubprocessError, OSError):
    raise VersusError(f"no reference venv (.venv-ref with torch + open_clip) and this python "
                      f"lacks open_clip; build it with `{REF_FIX}`") from None


def run_torch(args, name: str, matmul_only: bool = False) -> dict:
  python = torch_python(args.torch_python)
  cmd = [python, os.path.join(_HERE, "versus_torch.py"), f"--model={name}",
         f"--batch={args.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
  if matmul_only:
    cmd.append("--matmul_only")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  if args.torch_malloc:
    env.update(platforms.MALLOC_SETTINGS_ENV)
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
  except subprocess.TimeoutExpired:
    raise VersusError(f"the open_clip step ran past --timeout={args.timeout:.0f}s") from None
  except OSError as e:
    raise VersusError(f"cannot run {python}: {e.strerror}; build the reference venv with "
                      f"`{REF_FIX}`") from None
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:]) or "no output"
    fix = f"; rebuild the reference venv with `{REF_FIX}`" if (
        "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr) else ""
    raise VersusError(f"the open_clip side failed ({python}): {tail}{fix}")
  return json.loads(lines[-1])


# ---------------------------------------------------------------------------- mmjax side


def mmjax_config(module: str, batch: int, overrides):
  """The mmjax config, matched to open_clip's ViT-B-16 train step."""
  import importlib  # pylint: disable=import-outside-toplevel
  c = importlib.import_module(module).get_config()
  c.batch_size = batch
  c.model.dtype = c.model.param_dtype = "float32"
  c.model.activation = "gelu"          # open_clip ViT-B-16: nn.GELU (erf), not QuickGELU
  c.model.norm_eps = 1e-5              # torch LayerNorm default
  c.model.modalities.text.update({"max_len": 77, "vocab_size": 49408, "causal": True})
  c.data.update({"text_len": 77})
  c.loss_weights.update({k: 0.0 for k in c.loss_weights})
  c.loss_weights.contrastive = 1.0
  # Only CLIP's own head: with the default 'all', unused MLM/MIM/ITM/sigmoid heads (~26M
  # params, the 49,408-way MLM head above all) would get AdamW updates open_clip doesn't have.
  c.model.objective_heads = ("contrastive",)
  c.optimizer.grad_clip = 0.0           # open_clip: no clipping unless --grad-clip-norm
  c.optimizer.eps = 1e-6                # open_clip's AdamW eps for ViTs
  for item in overrides:
    key, _, val = item.partition("=")
    node = c
    *path, leaf = key.split(".")
    for k in path:
      node = node[k]
    node[leaf] = cli.literal(val)
  return c


def run_mmjax(args, module: str) -> dict:
  import dataclasses  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from mmjax import configure, models, sharding, train_lib  # pylint: disable=import-outside-toplevel
  from mmjax.bench import versus_torch  # pylint: disable=import-outside-toplevel
  from mmjax.bench.step import synthetic_batch  # pylint: disable=import-outside-toplevel

  cfg = configure.resolve(mmjax_config(module, args.batch, args.set))
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh))
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
  batch = jax.device_put(synthetic_batch(cfg), sharding.batch_sharding(mesh))
  t0 = time.perf_counter()
  step = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  print(f"mmjax: compiled in {compile_s:.1f}s", file=sys.stderr, flush=True)
  losses, times, sys_s, faults = [], [], [], []
  for i in range(args.warmup + args.steps):
    t, ru = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= args.warmup:
      times.append(time.perf_counter() - t)
      after = resource.getrusage(resource.RUSAGE_SELF)
      sys_s.append(after.ru_stime - ru.ru_stime)
      faults.append(after.ru_minflt - ru.ru_minflt)
    losses.append(float(metrics["loss"]))
    print(f"mmjax: step {i + 1} {time.perf_counter() - t:.3f}s loss {losses[-1]:.6f}",
          file=sys.stderr, flush=True)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  text = cfg.model.modality("text")
  return {"step_s": float(np.median(times)), "step_times": times, "compile_s": compile_s,
          "step_sys_s": float(np.median(sys_s)), "step_minflt": int(np.median(faults)),
          "peak_rss_mib": versus_torch.peak_rss_mib(),
          "loss_first": losses[0], "losses": losses, "params": n_params,
          "text_len": batch["text"].shape[1], "vocab": text.option("vocab_size"),
          "attention": cfg.model.block.attention_impl, "remat": cfg.model.block.remat}


def mmjax_matmul_gflops() -> float:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from mmjax.perf import measured_matmul_tflops  # pylint: disable=import-outside-toplevel
  return measured_matmul_tflops(2048, jnp.float32) * 1e3


# ---------------------------------------------------------------------------- report

def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def report(res: dict) -> None:
  print(f"{res['model']} train step, float32, batch {res['batch']}, "
        f"{res['cpu_count']} CPUs; XLA_FLAGS={res['xla_flags'] or '(none)'}")
  print(f"  {res['processor'] or 'processor unknown'}; jax {res['jax']}, torch "
        f"{res['torch_version'] or '-'}, open_clip {res['open_clip_version'] or '-'}")
  print(f"  glibc malloc settings (mmjax/platforms.py): mmjax "
        f"{'on' if res['mmjax_malloc_defaults'] else 'off'}, open_clip "
        f"{'on' if res['torch_malloc'] else 'off'}")
  rows = [("step s (median)", res["mmjax_step_s"], res["torch_step_s"], ".3f"),
          ("matmul GFLOP/s f32 2048^3", res["mmjax_matmul_gflops"],
           res["torch_matmul_gflops"], ".1f"),
          ("loss at step 1", res["mmjax_loss_first"], res["torch_loss_first"], ".5f"),
          ("kernel (sys) s per step", res["mmjax"].get("step_sys_s"),
           res["torch"].get("step_sys_s"), ".2f"),
          ("page faults per step", res["mmjax"].get("step_minflt"),
           res["torch"].get("step_minflt"), "d"),
          ("peak RSS MiB", res["mmjax"].get("peak_rss_mib"), res["torch"].get("peak_rss_mib"),
           ".0f")]
  print(f"  {'':28s}{'mmjax (XLA)':>14s}{'open_clip (torch)':>20s}")
  for name, a, b, spec in rows:
    print(f"  {name:28s}{_fmt(a, spec):>14s}{_fmt(b, spec):>20s}")
  print(f"  step ratio torch/mmjax {_fmt(res['ratio'], '.3f')} (>1: mmjax faster)  |  "
        f"matmul peak ratio mmjax/torch {_fmt(res['matmul_ratio'], '.3f')}")
  if res.get("torch_fused_qkv") is not None:
    print(f"  open_clip attention uses a fused QKV projection (in_proj): "
          f"{res['torch_fused_qkv']}")


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), args.xla_flags) if f)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  platforms.apply_cpu_defaults()  # before jax is imported (docs/process_settings.md)
  module, name = MODELS[args.model]
  try:
    if args.only in ("", "torch", "matmul"):
      torch_python(args.torch_python)  # fail fast, before the long mmjax side
    mm = tr = None
    if args.only in ("", "mmjax"):
      mm = run_mmjax(args, module)
    mm_peak = mmjax_matmul_gflops() if args.only != "torch" else None
    if args.only in ("", "torch", "matmul"):
      tr = run_torch(args, name, matmul_only=args.only == "matmul")
  except VersusError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  mm, tr = mm or {}, tr or {}
  import jax  # pylint: disable=import-outside-toplevel  (after XLA_FLAGS is set)

  from mmjax.perf import processor  # pylint: disable=import-outside-toplevel
  res = {"model": args.model, "open_clip_model": name, "batch": args.batch,
         "processor": processor(), "jax": jax.__version__, "torch_version": tr.get("torch"),
         "open_clip_version": tr.get("open_clip"),
         "steps": args.steps, "warmup": args.warmup, "cpu_count": os.cpu_count(),
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "overrides": args.set,
         "mmjax_malloc_defaults": platforms.malloc_defaults_applied,
         "torch_malloc": args.torch_malloc,
         "mmjax_step_s": mm.get("step_s"), "torch_step_s": tr.get("step_s"),
         "mmjax_matmul_gflops": mm_peak, "torch_matmul_gflops": tr.get("matmul_gflops"),
         "mmjax_loss_first": mm.get("loss_first"), "torch_loss_first": tr.get("loss_first")}
  res["ratio"] = (res["torch_step_s"] / res["mmjax_step_s"]
                  if res["torch_step_s"] and res["mmjax_step_s"] else None)
  res["matmul_ratio"] = (res["mmjax_matmul_gflops"] / res["torch_matmul_gflops"]
                         if res["mmjax_matmul_gflops"] and res["torch_matmul_gflops"] else None)
  res["torch_fused_qkv"] = tr.get("fused_qkv")
  res["mmjax"] = mm
  res["torch"] = tr
  report(res)
  print(json.dumps(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
