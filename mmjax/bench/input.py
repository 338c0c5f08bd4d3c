"""Input-pipeline throughput, the pipeline alone (no model): examples/s of make_dataset batches.

  python -m mmjax.bench.input --task=image_text --batch=64 --image_size=32 --steps=50
  python -m mmjax.bench.input --task=image_text --batch=64 --image_size=224 --text_len=64

Any data config key can be set with --data.KEY=VALUE (e.g. --data.source=jsonl
--data.jsonl_path=/data/m.jsonl). The last stdout line is one JSON object with `examples_per_s`.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from mmjax.data import pipeline  # noqa: E402


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--task", default="image_text")
  p.add_argument("--batch", type=int, default=64, help="global batch size")
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--text_len", type=int, default=32)
  p.add_argument("--steps", type=int, default=50, help="timed batches")
  p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
  p.add_argument("--num_workers", type=int, default=0, help="grain multiprocess workers")
  p.add_argument("--read_threads", type=int, default=2, help="grain threads per process")
  p.add_argument("--seed", type=int, default=0)
  args, rest = p.parse_known_args(argv)
  overrides = {}
  for item in rest:
    if not item.startswith("--data.") or "=" not in item:
      p.error(f"unrecognized argument {item}; data keys go as --data.KEY=VALUE")
    key, value = item[len("--data."):].split("=", 1)
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return args, overrides


def run(args, overrides) -> dict:
  data = {"task": args.task, "image_size": args.image_size, "text_len": args.text_len,
          "read_threads": args.read_threads, "train_examples": max(50_000, args.batch),
          **overrides}
  ds = pipeline.make_dataset(data, "train", global_batch_size=args.batch, seed=args.seed,
                             num_workers=args.num_workers)
  t0 = time.perf_counter()
  it = iter(ds)
  batch = next(it)
  first = time.perf_counter() - t0
  for _ in range(max(args.warmup - 1, 0)):
    next(it)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    batch = next(it)
  dt = time.perf_counter() - t0
  nbytes = sum(v.nbytes for v in batch.values())
  if hasattr(it, "close"):
    it.close()
  return {"task": args.task, "source": data.get("source", "builtin"), "batch": args.batch,
          "image_size": args.image_size, "text_len": args.text_len, "steps": args.steps,
          "num_workers": args.num_workers, "read_threads": args.read_threads,
          "first_batch_s": round(first, 3), "seconds": round(dt, 3),
          "batches_per_s": round(args.steps / dt, 2),
          "examples_per_s": round(args.steps * args.batch / dt, 1),
          "batch_mib": round(nbytes / 2**20, 2),
          "shapes": {k: list(v.shape) for k, v in batch.items()}}


def main(argv=None):
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  res = run(args, overrides)
  print(f"{res['source']}/{res['task']} batch={res['batch']} image={res['image_size']} "
        f"text_len={res['text_len']} workers={res['num_workers']} threads={res['read_threads']}: "
        f"{res['examples_per_s']:.0f} examples/s ({res['batches_per_s']:.2f} batches/s, "
        f"{res['batch_mib']} MiB/batch, first batch {res['first_batch_s']} s)")
  print(json.dumps(res))
  return res


if __name__ == "__main__":
  main()
