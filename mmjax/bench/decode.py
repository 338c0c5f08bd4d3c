"""Caption decoding speed: tokens per second with and without the key/value cache, and beam.

  python -m mmjax.bench.decode [--config=coca] [--workdir=DIR] [--batch=64] [--max_len=48]
      [--beams=1,4] [--repeats=5]

Builds the config's model (random parameters, or a trained --workdir's), then times, back to
back in one process on the same inputs, each of:
  greedy/cache     one new token per step through the per-layer key/value cache
  greedy/no_cache  the whole prefix recomputed every step (the same captions: checked)
  beam<K>/cache    beam search of width K (K captions kept per input)
Each is compiled first (not timed), then run --repeats times; the median wall time gives
tokens/s = batch * (max_len - 1) / time (every step decodes one token per input, also after an
input's end token: the loop has a fixed length). Prints one JSON line per variant and a table.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import argparse
import json
import statistics
import time

import jax
import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m mmjax.bench.decode")
  p.add_argument("--config", default="coca")
  p.add_argument("--workdir", default="")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--max_len", type=int, default=48)
  p.add_argument("--beams", default="1,4")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  from mmjax import config_lib, configure, generate, models, sharding  # pylint: disable=import-outside-toplevel
  from mmjax.data import text as text_lib  # pylint: disable=import-outside-toplevel
  if args.workdir:
    from mmjax import evaluate  # pylint: disable=import-outside-toplevel
    cfg, model, params, mesh, _ = evaluate.restore(args.workdir, devices=jax.devices()[:1])
  else:
    cfg = configure.resolve(config_lib.load_config(args.config))
    model = models.build_model(cfg)
    params = model.init(jax.random.key(0), models.dummy_batch(cfg, 2), method=model.init_all)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  tok = text_lib.from_config(cfg.data)
  gen = generate.Generator(model, params, mesh, bos_id=tok.cls_id, eos_id=tok.sep_id,
                           pad_id=tok.pad_id)
  src = cfg.model.caption_source
  shape = models.dummy_batch(cfg, args.batch)[src].shape
  x = {src: np.random.default_rng(0).normal(size=shape).astype(np.float32)}
  variants = [("greedy/cache", dict(beam=1, use_cache=True)),
              ("greedy/no_cache", dict(beam=1, use_cache=False))]
  variants += [(f"beam{k}/cache", dict(beam=k)) for k in map(int, args.beams.split(","))
               if k > 1]
  rows, outputs = [], {}
  for name, kw in variants:
    outputs[name] = gen(x, max_len=args.max_len, **kw)  # compile + first run
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      gen(x, max_len=args.max_len, **kw)
      times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    row = {"variant": name, "batch": args.batch, "max_len": args.max_len, "seconds": sec,
           "tokens_per_s": args.batch * (args.max_len - 1) / sec,
           "device": jax.devices()[0].device_kind}
    rows.append(row)
    print(json.dumps(row), flush=True)
  same = bool((outputs["greedy/cache"] == outputs["greedy/no_cache"]).all())
  base = rows[0]["tokens_per_s"]
  print(f"\ncached and uncached greedy captions identical: {same}")
  print("| variant | s per batch | tokens/s | vs greedy/cache |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['seconds']:.3f} | {r['tokens_per_s']:.0f} | "
          f"{r['tokens_per_s'] / base:.2f}x |")
  return 0 if same else 1


if __name__ == "__main__":
  raise SystemExit(main())
