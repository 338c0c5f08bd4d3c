"""The PyTorch side of mmjax.bench.versus: open_clip's train step and torch's f32 matmul peak.

  .venv-ref/bin/python mmjax/bench/versus_torch.py --model=ViT-B-16 --batch=8 --steps=3 --warmup=1

Imports torch and open_clip only (never jax); random init (pretrained=None, no downloads).
One step: forward of both towers, open_clip's ClipLoss, backward, AdamW (open_clip's defaults
for ViT: betas (0.9, 0.98), eps 1e-6, weight decay 0.2 off gains and biases). float32.
The last stdout line is one JSON object (step_s, matmul_gflops, loss_first, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time


def import_torchvision(torch):
  """torchvision as installed. A build that matches torch registers its own C++ ops (nms,
  qnms) on import. PyPI's torchvision is built against the CUDA torch, so beside a CPU build
  those ops are missing and its import fails registering fake kernels for them; only then are
  the two schemas declared and the import retried (open_clip needs only its Python parts)."""
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
    return torchvision
  except RuntimeError:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
  for op in ("nms", "qnms"):
    try:
      torch.library.define(f"torchvision::{op}",
                           "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # declared by an earlier, partial import
      pass
  import torchvision  # pylint: disable=import-outside-toplevel
  return torchvision


def _import_open_clip():
  import torch  # pylint: disable=import-outside-toplevel
  import_torchvision(torch)
  import open_clip  # pylint: disable=import-outside-toplevel
  return torch, open_clip


def matmul_gflops(torch, n: int = 2048, reps: int = 5) -> float:
  a = torch.ones((n, n), dtype=torch.float32)
  torch.mm(a, a)
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    torch.mm(a, a)
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def peak_rss_mib():
  """This process's peak resident memory (VmHWM; ru_maxrss would carry a parent's peak over
  fork + exec), in MiB; None where /proc is absent."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
  except (OSError, StopIteration):
    return None


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="ViT-B-16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--threads", type=int, default=0, help="0: os.cpu_count()")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--matmul_only", action="store_true", help="the matmul peak only, no step")
  args = p.parse_args()

  torch, open_clip = _import_open_clip()
  threads = args.threads or os.cpu_count()
  torch.set_num_threads(threads)
  torch.manual_seed(args.seed)
  peak = matmul_gflops(torch)
  malloc_env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
  if args.matmul_only:
    print(json.dumps({"matmul_gflops": peak, "threads": threads, "torch": torch.__version__,
                      "open_clip": open_clip.__version__,
                      "mkldnn": bool(torch.backends.mkldnn.is_available()),
                      "malloc_env": malloc_env}))
    return 0

  model = open_clip.create_model(args.model, pretrained=None)
  model.train()
  cfg = open_clip.get_model_config(args.model)
  size = cfg["vision_cfg"]["image_size"]
  ctx = cfg["text_cfg"].get("context_length", 77)
  vocab = cfg["text_cfg"].get("vocab_size", 49408)
  fused_qkv = any(hasattr(m, "in_proj_weight") and m.in_proj_weight is not None
                  for m in model.modules())

  decay = [q for n, q in model.named_parameters()
           if not (q.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n)]
  no_decay = [q for n, q in model.named_parameters()
              if q.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
  opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                           {"params": decay, "weight_decay": 0.2}],
                          lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
  loss_fn = open_clip.ClipLoss()

  g = torch.Generator().manual_seed(args.seed)
  images = torch.randn(args.batch, 3, size, size, generator=g)
  texts = torch.randint(1, vocab - 1, (args.batch, ctx), generator=g)
  texts[:, -1] = vocab - 1  # an end token (argmax pooling) in every row

  def step():
    image_features, text_features, logit_scale = model(images, texts)[:3]
    loss = loss_fn(image_features, text_features, logit_scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())

  losses, times, sys_s, faults = [], [], [], []
  for _ in range(args.warmup):
    losses.append(step())
  for _ in range(args.steps):
    t, ru = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    losses.append(step())
    times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    sys_s.append(after.ru_stime - ru.ru_stime)
    faults.append(after.ru_minflt - ru.ru_minflt)
  n_params = sum(q.numel() for q in model.parameters())
  print(json.dumps({
      "model": args.model, "batch": args.batch, "image_size": size, "text_len": ctx,
      "vocab": vocab, "params": n_params, "threads": threads, "torch": torch.__version__,
      "open_clip": open_clip.__version__, "fused_qkv": fused_qkv,
      "matmul_gflops": peak, "step_s": statistics.median(times), "step_times": times,
      "step_sys_s": statistics.median(sys_s), "step_minflt": int(statistics.median(faults)),
      "peak_rss_mib": peak_rss_mib(),
      "loss_first": losses[0], "losses": losses,
      "mkldnn": bool(torch.backends.mkldnn.is_available()), "malloc_env": malloc_env,
  }))
  return 0


if __name__ == "__main__":
  sys.exit(main())
