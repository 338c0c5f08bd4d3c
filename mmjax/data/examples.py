"""Small real labelled sets written as a JSONL manifest, for trying mmjax on your own data.

  python -m mmjax.data.examples digits --out DIR [--size 32] [--augment 0] [--seed 0]
      [--mixed_aspect]

`digits` is scikit-learn's bundled handwritten digits (load_digits: 1,797 real 8x8 grayscale
scans, 10 classes, no download; needs the `bench` or `test` extra). It writes

  DIR/images/{train,test}/NNNNN[_k].png   each digit upsampled (bicubic) to size x size RGB,
                                          ink white on black, 16 grey levels spread to 0..255
  DIR/train.jsonl, DIR/test.jsonl         {"image": "images/...", "caption": "...", "label": c}
  DIR/class_names.txt                     one class name per line (line c = label c)
  DIR/prompt_templates.txt                one template per line, '{}' marks the class name
  DIR/meta.json                           counts, split seed, templates, what was written

The split is fixed and stratified (REGION_TEMPLATE = "the digit {}"  # --regions: each digit's region caption
INK = 32  # --regions: a pixel brighter than this (of 255) is ink
TEST_SIZE = 450 test, 1,347 train, every class in both at
its own frequency). Every image gets one caption: a template drawn at random (seeded per
example) filled with its class name, e.g. 'a photo of the digit seven.'. This is the
'labelled images + templated captions' set that configs/own_data.py is tuned on. The longest
caption is 36 bytes: longer than configs/default.py's text_len of 32 (30 bytes + [CLS] and
[SEP]) keeps, which cuts 'a scan of a handwritten digit seven.' before the class name.

--augment K adds K shifted and rotated copies of each *train* image (offline augmentation,
+-1 source pixel, +-10 degrees; the pipeline itself does not augment). The test split is
never augmented.

--mixed_aspect puts each size x size digit on a black canvas whose aspect w / h is drawn
log-uniform in [1/3, 3] (its short side = size), at a random place (`on_canvas`, seeded per
example): a set of mixed-aspect images for native-aspect training (data.max_patches), where
a square resize distorts the digit and a native one does not.

--canvas N puts each size x size digit at a random place (seeded per example) on a black
N x N square: where the digit is becomes something to find. --regions gives every line the
digit as its one region, {"regions": [{"box": [y0, x0, y1, x1], "caption": "the digit seven"}]}
with the box the extent of its ink (pixels above INK) in [0, 1] of the written image: the
region data of LocCa (data.regions=True).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Caption templates (training) and zero-shot prompts: the same family, '{}' = the class name.
DIGIT_TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}, written by hand.",
    "a scan of a handwritten digit {}.",
    "a small grey image of a {}.",
)
REGION_TEMPLATE = "the digit {}"  # --regions: each digit's region caption
INK = 32  # --regions: a pixel brighter than this (of 255) is ink
TEST_SIZE = 450
SPLIT_SEED = 0


def load_digits() -> Tuple[np.ndarray, np.ndarray]:
  """(images uint8 [1797, 8, 8] in 0..255, labels int [1797]) from scikit-learn."""
  try:
    from sklearn.datasets import load_digits as sk_load  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError("the digits example needs scikit-learn; pip install -e '.[bench]'"
                      ) from None
  d = sk_load()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
  return images, d.target.astype(np.int64)


def stratified_split(labels: np.ndarray, test_size: int = TEST_SIZE, seed: int = SPLIT_SEED
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices), both sorted: each class gives round(test_size * n_c / N)
  test examples (largest remainders fix the total), chosen by a seeded permutation."""
  rng = np.random.RandomState(seed)
  classes, counts = np.unique(labels, return_counts=True)
  exact = test_size * counts / counts.sum()
  take = np.floor(exact).astype(int)
  for c in np.argsort(-(exact - take), kind="stable")[: test_size - take.sum()]:
    take[c] += 1
  test = []
  for c, k in zip(classes, take):
    idx = np.flatnonzero(labels == c)
    test.extend(rng.permutation(idx)[:k].tolist())
  test = np.sort(np.asarray(test, np.int64))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def upsample(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 [h, w] -> uint8 RGB [size, size, 3] (bicubic)."""
  up = Image.fromarray(img, mode="L").resize((size, size), Image.BICUBIC)
  return np.repeat(np.asarray(up)[..., None], 3, axis=-1)


def on_canvas(img: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
  """uint8 [s, s, 3] -> uint8 [h, w, 3] of aspect w / h log-uniform in [1/3, 3], min(h, w) =
  s, black, with img at a uniformly drawn offset."""
  s = img.shape[0]
  aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
  h, w = (s, int(round(s * aspect))) if aspect >= 1 else (int(round(s / aspect)), s)
  out = np.zeros((h, w, 3), np.uint8)
  top, left = rng.randint(0, h - s + 1), rng.randint(0, w - s + 1)
  out[top:top + s, left:left + s] = img
  return out


def on_square_canvas(img: np.ndarray, canvas: int, rng: np.random.RandomState) -> np.ndarray:
  """uint8 [s, s, 3] -> uint8 [canvas, canvas, 3], black, with img at a uniformly drawn offset."""
  s = img.shape[0]
  out = np.zeros((canvas, canvas, 3), np.uint8)
  top, left = rng.randint(0, canvas - s + 1), rng.randint(0, canvas - s + 1)
  out[top:top + s, left:left + s] = img
  return out


def ink_box(pixels: np.ndarray, threshold: int = INK) -> List[float]:
  """The extent of the pixels brighter than `threshold` as [y0, x0, y1, x1] in [0, 1] of the
  image (pixel edges: a lone pixel at (i, j) of an h x w image is [i/h, j/w, (i+1)/h,
  (j+1)/w]); the whole image when nothing is that bright."""
  h, w = pixels.shape[:2]
  ys, xs = np.nonzero(pixels.reshape(h, w, -1).max(axis=-1) > threshold)
  if not len(ys):
    return [0.0, 0.0, 1.0, 1.0]
  return [float(ys.min()) / h, float(xs.min()) / w, float(ys.max() + 1) / h,
          float(xs.max() + 1) / w]


def augment(img: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
  """A random shift (+-1 source pixel, in 1/4-pixel steps) and rotation (+-10 degrees) of an
  8x8 uint8 digit, done at 4x resolution and brought back to 8x8 (bilinear)."""
  big = Image.fromarray(img, mode="L").resize((32, 32), Image.BICUBIC)
  dx, dy = rng.randint(-4, 5, size=2)
  big = big.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR,
                   translate=(int(dx), int(dy)), fillcolor=0)
  return np.asarray(big.resize((8, 8), Image.BILINEAR))


def _write_split(out: str, split: str, images, labels, indices, size: int, copies: int,
                 seed: int, mixed_aspect: bool = False, canvas: int = 0,
                 regions: bool = False) -> List[Dict]:
  folder = os.path.join(out, "images", split)
  os.makedirs(folder, exist_ok=True)
  rows = []
  for i in indices:
    rng = np.random.RandomState([seed, int(i)])
    for k in range(copies + 1):
      img = images[i] if k == 0 else augment(images[i], rng)
      rel = f"images/{split}/{int(i):05d}" + (f"_{k}" if k else "") + ".png"
      pixels = upsample(img, size)
      if canvas:  # its own stream, like mixed_aspect's: the captions stay the square set's
        pixels = on_square_canvas(pixels, canvas, np.random.RandomState([seed, int(i), k, 2]))
      if mixed_aspect:  # its own stream: the captions stay those of the square set
        pixels = on_canvas(pixels, np.random.RandomState([seed, int(i), k, 1]))
      Image.fromarray(pixels).save(os.path.join(out, rel))
      template = DIGIT_TEMPLATES[rng.randint(len(DIGIT_TEMPLATES))]
      row = {"image": rel, "caption": template.format(DIGIT_NAMES[labels[i]]),
             "label": int(labels[i])}
      if regions:
        row["regions"] = [{"box": ink_box(pixels),
                           "caption": REGION_TEMPLATE.format(DIGIT_NAMES[labels[i]])}]
      rows.append(row)
  with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return rows


def prepare_digits(out: str, size: int = 32, augment_copies: int = 0, seed: int = 0,
                   mixed_aspect: bool = False, canvas: int = 0, regions: bool = False) -> Dict:
  """Writes the digits set to `out` (see the module doc); returns meta.json's content.
  Rerunning with the same arguments rewrites identical files."""
  if size < 8:
    raise ValueError(f"--size {size} is below the digits' own 8x8; use 8 or more")
  if canvas and canvas < size:
    raise ValueError(f"--canvas {canvas} is smaller than --size {size}; use at least {size}")
  if augment_copies < 0:
    raise ValueError(f"--augment {augment_copies} must be >= 0")
  images, labels = load_digits()
  train, test = stratified_split(labels)
  os.makedirs(out, exist_ok=True)
  rows = _write_split(out, "train", images, labels, train, size, augment_copies, seed,
                      mixed_aspect, canvas, regions)
  n_train = len(rows)
  n_test = len(_write_split(out, "test", images, labels, test, size, 0, seed, mixed_aspect,
                            canvas, regions))
  longest = max(len(t.format(n).encode("utf-8")) for t in DIGIT_TEMPLATES for n in DIGIT_NAMES)
  with open(os.path.join(out, "class_names.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(DIGIT_NAMES) + "\n")
  with open(os.path.join(out, "prompt_templates.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(DIGIT_TEMPLATES) + "\n")
  meta = {"dataset": "sklearn.datasets.load_digits", "size": size, "seed": seed,
          "split_seed": SPLIT_SEED, "augment": augment_copies, "mixed_aspect": mixed_aspect,
          "canvas": canvas, "regions": regions, "train_examples": n_train,
          "test_examples": n_test, "train_source_images": len(train),
          "test_source_images": len(test), "longest_caption_bytes": longest,
          "class_names": list(DIGIT_NAMES),
          "templates": list(DIGIT_TEMPLATES)}
  with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  return meta


def read_lines(path: str) -> List[str]:
  """Non-empty stripped lines of a text file (class_names.txt, prompt_templates.txt)."""
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


DATASETS = {"digits": prepare_digits}


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m mmjax.data.examples", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("dataset", choices=sorted(DATASETS))
  p.add_argument("--out", required=True, help="output folder (created)")
  p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
  p.add_argument("--augment", type=int, default=0, help="augmented copies per train image")
  p.add_argument("--seed", type=int, default=0, help="caption / augmentation seed")
  p.add_argument("--mixed_aspect", action="store_true",
                 help="each digit on a canvas of aspect 1:3 to 3:1 (native-aspect training)")
  p.add_argument("--canvas", type=int, default=0,
                 help="each digit at a random place on a black canvas x canvas square")
  p.add_argument("--regions", action="store_true",
                 help="each line gets the digit's ink box and 'the digit <name>' (LocCa)")
  a = p.parse_args(argv)
  try:
    meta = DATASETS[a.dataset](a.out, size=a.size, augment_copies=a.augment, seed=a.seed,
                               mixed_aspect=a.mixed_aspect, canvas=a.canvas,
                               regions=a.regions)
  except (ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  shape = (f"{meta['size']}x{meta['size']} digits on 1:3 to 3:1 canvases" if a.mixed_aspect
           else f"{meta['size']}x{meta['size']}")
  if a.canvas:
    shape += f" at random places on {a.canvas}x{a.canvas}"
  print(f"wrote {meta['train_examples']} train / {meta['test_examples']} test examples "
        f"({shape}) to {a.out}: train.jsonl, test.jsonl, "
        "class_names.txt, prompt_templates.txt")
  print(f"longest caption: {meta['longest_caption_bytes']} bytes; the bytes tokenizer keeps "
        f"data.text_len - 2 of them (configs/default.py: 30), so train with data.text_len >= "
        f"{meta['longest_caption_bytes'] + 2} (configs/own_data.py: 48)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
