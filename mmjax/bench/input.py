"""Input-pipeline throughput, the pipeline alone (no model): examples/s of make_dataset batches.

  python -m mmjax.bench.input --task=image_text --batch=64 --image_size=32 --steps=50
  python -m mmjax.bench.input --task=image_text --batch=64 --image_size=224 --text_len=64

Any data config key can be set with --data.KEY=VALUE (e.g. --data.source=jsonl
--data.jsonl_path=/data/m.jsonl). The last stdout line is one JSON object with `examples_per_s`.

JPEG decode alone, one core, the full decode against the reduced one (data.jpeg_draft), back
to back on the same generated JPEGs; the last line is one JSON object with both rates and the
pixel differences between the two paths:

  python -m mmjax.bench.input --decode_jpeg=200 --jpeg_size=500x375 --image_size=224

Sharded input against a manifest, on generated photo-like JPEGs (one row per source and worker
count, back to back in one run; the last line is a JSON list of the rows):

  python -m mmjax.bench.input --synthetic_jpeg=2048 --sources=jsonl,wds,array_record \
      --workers=0,2 --image_size=224 --batch=64 --steps=20
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

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
  p.add_argument("--synthetic_jpeg", type=int, default=0,
                 help="generate this many JPEGs (a manifest and its shards) and compare sources")
  p.add_argument("--jpeg_size", default="320x256", help="WxH of the generated JPEGs")
  p.add_argument("--decode_jpeg", type=int, default=0,
                 help="time decoding this many generated JPEGs, full and reduced (one core)")
  p.add_argument("--shard_size", type=int, default=512, help="examples per generated shard")
  p.add_argument("--sources", default="jsonl,wds", help="with --synthetic_jpeg: sources to time")
  p.add_argument("--workers", default="0", help="with --synthetic_jpeg: num_workers values")
  p.add_argument("--cache_dir", default="", help="where to keep the generated set ('' = temp)")
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


def photo_like(rng, size):
  """A PIL RGB image of size (W, H): a smooth colour field plus mild noise."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  w, h = size
  coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
  img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
  arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (h, w, 3))
  return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def decode_jpeg(n: int, size, image_size: int, recipe: str = "pil") -> dict:
  """Images/s of decode.resize_image on n generated JPEGs of `size` (W, H), quality 90, with
  the full decode and with the reduced one, timed back to back in this process (one core:
  decoding runs in the calling thread), and how far the reduced path's pixels are from the
  full one's (0-255 units)."""
  import io  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mmjax.data import decode  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  blobs = []
  for _ in range(n):
    buf = io.BytesIO()
    photo_like(rng, size).save(buf, format="JPEG", quality=90)
    blobs.append(buf.getvalue())
  res, outs = {"n": n, "jpeg_size": list(size), "image_size": image_size, "recipe": recipe}, {}
  for draft in (False, True):
    decode.resize_image(blobs[0], image_size, recipe, draft=draft)  # warm
    t0 = time.perf_counter()
    outs[draft] = [decode.resize_image(b, image_size, recipe, draft=draft) for b in blobs]
    res["draft" if draft else "full"] = n / (time.perf_counter() - t0)
  diff = np.abs(np.stack(outs[True]) - np.stack(outs[False])) * 255.0
  res.update(speedup=res["draft"] / res["full"], mean_abs_diff=float(diff.mean()),
             max_abs_diff=float(diff.max()))
  return res


def synthetic_jpegs(out: str, n: int, size=(320, 256), shard_size: int = 512) -> dict:
  """n photo-like JPEGs (smooth colour fields plus mild noise, quality 90) in out/img, a
  manifest out/m.jsonl (caption, label) and its wds / ArrayRecord shards; reused when present."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mmjax.data import write  # pylint: disable=import-outside-toplevel
  manifest = os.path.join(out, "m.jsonl")
  done = os.path.join(out, "done.json")
  if os.path.exists(done):
    with open(done) as f:
      meta = json.load(f)
    if meta.get("n") == n and meta.get("size") == list(size):
      return meta
  os.makedirs(os.path.join(out, "img"), exist_ok=True)
  rng = np.random.default_rng(0)
  with open(manifest, "w") as f:
    for i in range(n):
      photo_like(rng, size).save(os.path.join(out, "img", f"{i}.jpg"), quality=90)
      f.write(json.dumps({"image": f"img/{i}.jpg", "caption": f"synthetic photo {i}",
                          "label": i % 10}) + "\n")
  meta = {"n": n, "size": list(size), "manifest": manifest}
  for to in ("wds", "array_record"):
    meta[to] = write.write("jsonl", manifest, to, os.path.join(out, to), shard_size)["pattern"]
  meta["mean_jpeg_kib"] = round(sum(os.path.getsize(os.path.join(out, "img", f"{i}.jpg"))
                                    for i in range(n)) / n / 1024, 1)
  with open(done, "w") as f:
    json.dump(meta, f)
  return meta


def compare(args, overrides) -> list:
  """One row per (source, num_workers) on the generated set, back to back."""
  import tempfile  # pylint: disable=import-outside-toplevel
  from mmjax.data import shards as shards_lib  # pylint: disable=import-outside-toplevel
  out = args.cache_dir or tempfile.mkdtemp(prefix="mmjax_jpeg_")
  w, h = (int(v) for v in args.jpeg_size.lower().split("x"))
  meta = synthetic_jpegs(out, args.synthetic_jpeg, (w, h), args.shard_size)
  t0 = time.perf_counter()
  idx = shards_lib.WdsSource(shards_lib.shard_paths(meta["wds"]))
  index_s = time.perf_counter() - t0
  members = sum(len(ix.offsets) * len(ix) for ix in idx.indexes)
  print(f"generated set: {meta['n']} JPEGs {w}x{h} (mean {meta['mean_jpeg_kib']} KiB) in {out}; "
        f"wds index of {len(idx.paths)} shards: {index_s:.3f} s "
        f"({members / max(index_s, 1e-9):.0f} members/s)")
  keys = {"jsonl": {"jsonl_path": meta["manifest"]}, "wds": {"wds_shards": meta["wds"]},
          "array_record": {"array_record_paths": meta["array_record"]}}
  rows = []
  for source in args.sources.split(","):
    for workers in (int(x) for x in args.workers.split(",")):
      a = argparse.Namespace(**{**vars(args), "num_workers": workers})
      res = run(a, {"source": source, **keys[source], **overrides})
      res["cpu_cores"] = os.cpu_count()
      rows.append(res)
      print(f"  {source:>12} workers={workers} threads={args.read_threads}: "
            f"{res['examples_per_s']:8.1f} examples/s  (first batch {res['first_batch_s']} s)")
  return rows


def main(argv=None):
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  if args.decode_jpeg:
    size = tuple(int(v) for v in args.jpeg_size.lower().split("x"))
    res = decode_jpeg(args.decode_jpeg, size, args.image_size)
    print(f"{res['n']} JPEGs {size[0]}x{size[1]} -> {res['image_size']} px, one core: full "
          f"decode {res['full']:.1f} images/s, reduced (data.jpeg_draft) {res['draft']:.1f} "
          f"images/s, {res['speedup']:.2f}x; pixels differ by {res['mean_abs_diff']:.2f} on "
          f"average, {res['max_abs_diff']:.0f} at most (of 255)")
    print(json.dumps(res))
    return res
  if args.synthetic_jpeg:
    rows = compare(args, overrides)
    print(json.dumps(rows))
    return rows
  res = run(args, overrides)
  print(f"{res['source']}/{res['task']} batch={res['batch']} image={res['image_size']} "
        f"text_len={res['text_len']} workers={res['num_workers']} threads={res['read_threads']}: "
        f"{res['examples_per_s']:.0f} examples/s ({res['batches_per_s']:.2f} batches/s, "
        f"{res['batch_mib']} MiB/batch, first batch {res['first_batch_s']} s)")
  print(json.dumps(res))
  return res


if __name__ == "__main__":
  main()
