"""Native aspect's cost: one train step on square images against native-aspect images of
mixed aspect (3:1 to 1:3), padded and packed, at the same token slots per step, back to back
in one process: step time, examples/s, real tokens/s and the padding fraction.

  python -m mmjax.bench.native_aspect --config=configs/default.py --config.batch_size=64 \\
      [--min_patches=-1] [--per_row=2] [--steps=10] [--warmup=2] [--repeats=3] \\
      [--config.KEY=VALUE ...]

Variants (the config's image modality: input_shape S x S, patch p, so N = (S / p)^2):
  square   batch_size square S x S images: batch_size (1 + N) slots, none of them padding
  padded   batch_size images at native aspect, each within a budget drawn uniformly from
           [min_patches, N] (data.min_patches, data.max_patches = N; --min_patches=-1: N / 4,
           0: every image N), each padded to its 1 + N slots
  packed   as many native-aspect images as fit, first-fit decreasing, into rows of per_row
           images' slots (objectives.pack_images), the rows holding batch_size (1 + N) slots
The aspects are drawn log-uniform in [1/3, 3] (seeded); an image's grid is
mmjax.data.decode.native_grid. Real image tokens count [CLS] and each image's own patches;
tokens of every modality add the other modalities' slots (text: all L per example), the
fair count when packing puts more examples, so more text, in a step. The last stdout line is
one JSON list, a record per variant (mmjax.bench.step's fields plus variant, examples,
image_slots, real_tokens_per_s, all_tokens_per_s, padding).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import copy
import json

import numpy as np
from absl import app, flags

from mmjax import configure, packing
from mmjax.bench import step as step_bench  # its flags: --config, --steps, --warmup, --repeats
from mmjax.data import decode
from mmjax.perf import processor

_PER_ROW = flags.DEFINE_integer("per_row", 2, "Packed rows hold this many images' slots.")
_MIN = flags.DEFINE_integer("min_patches", -1, "Per-image budgets drawn from [this, N] "
                            "(-1: N / 4; 0: N for every image).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the aspects and pixels.")


def aspect_grids(count: int, max_patches: int, min_patches: int = 0, seed: int = 0):
  """[count, 2] int32 native grids of images whose aspect w / h is log-uniform in [1/3, 3],
  each within a budget uniform in [min_patches, max_patches] (0: max_patches)."""
  rng = np.random.RandomState(seed)
  aspects = np.exp(rng.uniform(np.log(1 / 3), np.log(3), count))
  budgets = rng.randint(min_patches or max_patches, max_patches + 1, count)
  return np.asarray([decode.native_grid(1000, int(round(1000 * a)), int(n))
                     for a, n in zip(aspects, budgets)], np.int32)


def native_batch(base, grids, seed: int = 0):
  """The synthetic batch of `base` (a Config) with its images as native-aspect patch rows of
  `grids` (random values, zero padding)."""
  batch = step_bench.synthetic_batch(_with_batch_size(base, len(grids)), seed)
  image = base.model.modality("image")
  p, n = image.option("patch"), int(base.data.max_patches)
  rng = np.random.RandomState(seed)
  rows = np.zeros((len(grids), n, p * p * image.channels), np.float32)
  for i, (gh, gw) in enumerate(grids):
    rows[i, :gh * gw] = rng.randn(gh * gw, rows.shape[2])
  batch.update(image=rows, image_patch_grid=np.asarray(grids, np.int32))
  return batch


def _with_batch_size(cfg, batch_size: int):
  """cfg's source ConfigDict with batch_size (synthetic_batch reads the size from it)."""
  c = copy.deepcopy(cfg.source)
  c.batch_size = batch_size
  return c


def fill_rows(grids_pool: np.ndarray, rows: int, row_len: int, cls: int) -> int:
  """How many of grids_pool's first images fit, whole, first-fit decreasing, in `rows` rows."""
  count = 0
  for k in range(1, len(grids_pool) + 1):
    lengths = cls + grids_pool[:k, 0] * grids_pool[:k, 1]
    if packing.assign_rows(lengths, row_len)[2] > rows:
      break
    count = k
  return count


def variants(config, per_row: int, min_patches: int = -1, seed: int = 0):
  """[(name, config, host batch)] for square, padded and packed at equal slots per step."""
  square = configure.resolve(config)
  image = square.model.modality("image")
  b, p = square.batch_size, image.option("patch")
  n = (image.input_shape[0] // p) * (image.input_shape[1] // p)
  cls = int(bool(image.option("add_cls")))
  native = copy.deepcopy(config)
  native.data.max_patches = n
  native.loss_weights.mim = 0.0
  padded = configure.resolve(native)
  pool = aspect_grids(b * 4, n, n // 4 if min_patches < 0 else min_patches, seed)
  out = [("square", config, step_bench.synthetic_batch(square, seed)),
         ("padded", native, native_batch(padded, pool[:b], seed))]
  rows, row_len = b // per_row, per_row * (cls + n)  # the same slots as b padded images
  k = fill_rows(pool, rows, row_len, cls)
  packed = copy.deepcopy(native)
  packed.batch_size = k
  packed.objectives.pack_images = True
  packed.objectives.image_pack_rows = rows
  packed.objectives.image_pack_len = row_len
  pcfg = configure.resolve(packed)
  batch = native_batch(pcfg, pool[:k], seed)
  out.append(("packed", packed, packing.add_image_pack_index(batch, pcfg.model, rows, row_len)))
  return out


def run(config, per_row: int, steps: int, warmup: int, repeats: int, min_patches: int = -1,
        seed: int = 0):
  rows = []
  for name, cfg, batch in variants(config, per_row, min_patches, seed):
    res = step_bench.benchmark(cfg, steps, warmup, repeats, batch=batch)
    resolved = configure.resolve(cfg)
    image = resolved.model.modality("image")
    tokens = packing.image_tokens(batch, image)
    if tokens is not None:
      lengths, per_image = tokens
      real = float(lengths.sum())
      slots = (batch["image_pack_index"].size if "image_pack_index" in batch
               else len(lengths) * per_image)
    else:  # square: every slot is a real token
      per = batch["image"].shape[1] * batch["image"].shape[2] // image.option("patch") ** 2
      real = slots = float(resolved.batch_size * (int(bool(image.option("add_cls"))) + per))
    other = float(sum(np.asarray(batch[m]).shape[0] * np.asarray(batch[m]).shape[1]
                      for m in resolved.model.names if m != "image"))  # text: all L slots
    res.update(variant={"images": name}, processor=processor(), examples=len(batch["image"]),
               image_slots=int(slots), real_tokens_per_s=real / res["step_s"],
               all_tokens_per_s=(real + other) / res["step_s"], padding=1.0 - real / slots)
    rows.append(res)
  return rows


def main(argv):
  del argv
  if _PER_ROW.value < 1:
    raise app.UsageError(f"--per_row={_PER_ROW.value}: give 1 or more images per packed row")
  config, steps, warmup, repeats = step_bench.flag_settings()
  rows = run(config, _PER_ROW.value, steps, warmup, repeats, _MIN.value, _SEED.value)
  step_bench.print_table(rows)
  base, base_all = rows[0]["real_tokens_per_s"], rows[0]["all_tokens_per_s"]
  for r in rows:
    print(f"  {r['variant']['images']:<8} {r['examples']:>4} images, {r['image_slots']} slots, "
          f"padding {r['padding']:.1%}, {r['real_tokens_per_s']:,.0f} real image tokens/s "
          f"({r['real_tokens_per_s'] / base:.2f}x square), {r['all_tokens_per_s']:,.0f} "
          f"tokens/s of every modality ({r['all_tokens_per_s'] / base_all:.2f}x)")
  print(json.dumps(rows))


if __name__ == "__main__":
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
