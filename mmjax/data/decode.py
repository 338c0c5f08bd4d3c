"""Decoding and preprocessing of external examples (TFDS records, JSONL manifest entries).

A raw example maps output names to raw values:
  image  encoded bytes | file path | uint8/float array [H, W, C]
  video  array [T, H, W, C] | .npy path | folder of frame images
  audio  waveform [N] (with 'audio_rate') | spectrogram [T, F] | .wav / .npy path
  text   str | bytes | sequence of them (the first is used; up to data.max_captions of them)
  label  int
  regions [{"box": [y0, x0, y1, x1] in [0, 1] of the image, "caption": str}, ...]
`Preprocessor(cfg)(index, raw)` turns it into model inputs: 'image' float32 [S, S, 3] (with
data.max_patches = N > 0: native aspect, 'image' float32 [N, p*p*3] patch rows and
'image_patch_grid' int32 [2], `native_image` / `patch_rows`),
'video' float32 [T, S, S, 3], 'audio' float32 [A, F], 'text' int32 [L], 'label' int32 [],
'index' int32 [] (and 'caption' when cfg.include_caption; with data.regions, the first
data.max_objects regions as 'region_boxes' [R, 4], 'region_text' [R, L], 'region_valid' [R],
boxes mapped through the image's centre crop). With C = data.max_captions > 1 also
'texts' int32 [C, L] (the first C captions, missing rows all PAD) and 'num_captions' int32 []
(>= 1; an empty list counts as one empty caption); 'text' is then the first caption.
"""
from __future__ import annotations

import functools
import io
import os
from typing import Any, Dict

import numpy as np
from PIL import Image

from mmjax.data import audio as audio_lib
from mmjax.data import regions as regions_lib
from mmjax.data import text as text_lib

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
IMAGE_RESIZE = ("pil", "pil_squash", "torchvision", "torchvision_squash")  # resize_image


def one_line(s: str) -> str:
  """`s` (or an exception) as one line: runs of whitespace, newlines included, become a space."""
  return " ".join(str(s).split())


# ----------------------------------------------------------------------------- images

def load_image(obj, where: str = "") -> np.ndarray:
  """bytes | path | PIL image | array -> uint8 RGB [H, W, 3] (alpha dropped); unreadable
  input -> one-line ValueError."""
  img = open_image(obj, where)
  return img if isinstance(img, np.ndarray) else np.asarray(img.convert("RGB"))


def open_image(obj, where: str = "", draft=None):
  """bytes | path | PIL image -> a loaded PIL image in its own mode; an array -> uint8 RGB
  [H, W, 3]. draft(h, w) -> (min_h, min_w): a JPEG is decoded at the smallest DCT scale (1,
  1/2, 1/4 or 1/8) that keeps it at least that large (PIL's draft; libjpeg scales while it
  decodes). Unreadable input -> one-line ValueError (a missing file: FileNotFoundError)."""
  if isinstance(obj, np.ndarray):
    return _rgb_array(obj)
  if hasattr(obj, "getbands"):  # a PIL image
    return obj
  try:
    src = io.BytesIO(obj) if isinstance(obj, (bytes, bytearray)) else obj
    with Image.open(src) as im:
      if draft is not None and im.format == "JPEG":
        min_h, min_w = draft(im.height, im.width)
        im.draft(None, (min_w, min_h))
      im.load()
      return im.copy()
  except FileNotFoundError:
    raise FileNotFoundError(
        one_line(f"image file not found: {obj} {where}; fix the path")) from None
  except Exception as e:  # PIL raises several types for bad data
    name = obj if isinstance(obj, (str, os.PathLike)) else f"<{len(obj)} bytes>"
    raise ValueError(one_line(
        f"cannot read image {name} {where} ({type(e).__name__}: {e}); "
        "replace the file with a valid PNG/JPEG or remove the entry")) from None


def _rgb_array(arr: np.ndarray) -> np.ndarray:
  """uint8 / float [H, W(, C)] (float in [0, 1] or [0, 255]) -> uint8 [H, W, 3]: one channel
  repeated, a fourth dropped."""
  if arr.dtype != np.uint8:
    arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  return np.ascontiguousarray(arr[..., :3])


def _rgb_over_white(im) -> np.ndarray:
  """PIL image -> uint8 [H, W, 3]; one with transparency is composited over white first."""
  if "A" in im.getbands() or im.info.get("transparency") is not None:
    rgba = im.convert("RGBA")
    im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba)
  return np.asarray(im.convert("RGB"))


def shorter_side_size(h: int, w: int, size: int):
  """(new_h, new_w) with the shorter side = size and the longer side size * long / short,
  truncated."""
  if w <= h:
    return int(size * h / w), size
  return size, int(size * w / h)


def resize_image(obj, size: int, recipe: str = "pil", where: str = "", draft: bool = False
                 ) -> np.ndarray:
  """An image (bytes | path | PIL image | uint8 / float array) -> float32 [size, size, 3] in
  [0, 1] by data.image_resize `recipe`:
    pil                 PIL bicubic on the uint8 image in its own mode (a palette image:
                        nearest), shorter side to size, centre crop (offset rounded), then RGB
                        (alpha dropped)
    pil_squash          the same, straight to size x size
    torchvision         RGB first (transparency composited over white), antialiased bicubic
                        on uint8 (`aa_bicubic_uint8`), shorter side to size, centre crop
                        (offset truncated)
    torchvision_squash  the same, straight to size x size
  draft: a JPEG larger than twice the resize is decoded reduced first (`open_image`), to no
  less than the resize's size, and resized from there (data.jpeg_draft)."""
  return resize_image_window(obj, size, recipe, where, draft)[0]


def resize_image_window(obj, size: int, recipe: str = "pil", where: str = "",
                        draft: bool = False):
  """(resize_image's result, window (top, left, nh, nw)): the crop kept, in pixels of the
  nh x nw resized image (what regions.crop_boxes maps boxes through)."""
  squash = recipe.endswith("_squash")
  img = open_image(obj, where, (lambda h, w: (size, size) if squash else
                                shorter_side_size(h, w, size)) if draft else None)
  h, w = _size(img)
  nh, nw = (size, size) if squash else shorter_side_size(h, w, size)
  out = _resized(img, nh, nw, recipe)
  if recipe.startswith("pil"):
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  else:
    top, left = int((nh - size) / 2.0), int((nw - size) / 2.0)
  out = out[top:top + size, left:left + size].astype(np.float32) * np.float32(1 / 255.0)
  return out, (top, left, nh, nw)


def _size(img):
  """(height, width) of an opened image (PIL image or uint8 array)."""
  return img.shape[:2] if isinstance(img, np.ndarray) else (img.size[1], img.size[0])


def _resized(img, nh: int, nw: int, recipe: str) -> np.ndarray:
  """An opened image -> uint8 RGB [nh, nw, 3] by the recipe's resize (no crop)."""
  if recipe.startswith("pil"):
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    if (nh, nw) != (im.size[1], im.size[0]):
      im = im.resize((nw, nh), Image.BICUBIC)
    return np.asarray(im.convert("RGB"))
  if recipe.startswith("torchvision"):
    rgb = img if isinstance(img, np.ndarray) else _rgb_over_white(img)
    return aa_bicubic_uint8(rgb, nh, nw)
  raise ValueError(f"unknown data.image_resize {recipe!r}; use one of "
                   f"{', '.join(IMAGE_RESIZE)}")


# ----------------------------------------------------------------------------- native aspect

@functools.lru_cache(maxsize=4096)  # a set's images share a few sizes; O(N) candidates each
def native_grid(h: int, w: int, max_patches: int):
  """(gh, gw): the patch grid of an h x w image at native aspect within a budget of N =
  max_patches patches. Candidates: gh x gw <= N with gw the floor or ceiling of gh w / h, or
  gh that of gw h / w; chosen: the least 2 |log(gw h / (gh w))| + |log(gh gw / N)| (aspect
  error counted twice the unused budget), ties to the larger grid."""
  n, aspect = int(max_patches), w / h
  grids = set()
  for a in range(1, n + 1):
    for b in (np.floor(a * aspect), np.ceil(a * aspect)):
      grids.add((a, min(max(int(b), 1), n // a)))
    for b in (np.floor(a / aspect), np.ceil(a / aspect)):
      grids.add((min(max(int(b), 1), n // a), a))

  def loss(g):
    return (round(2 * abs(np.log(g[1] / (g[0] * aspect))) + abs(np.log(g[0] * g[1] / n)), 9),
            -g[0] * g[1], g)
  return min(grids, key=loss)


def native_image(obj, patch: int, max_patches: int, recipe: str = "pil", where: str = "",
                 draft: bool = False) -> np.ndarray:
  """An image -> float32 [gh p, gw p, 3] in [0, 1]: resized keeping its aspect to the patch
  grid `native_grid` gives (no crop), by the data.image_resize recipe's resampling."""
  p = int(patch)
  img = open_image(obj, where, (lambda h, w: tuple(g * p for g in native_grid(h, w, max_patches)))
                   if draft else None)
  gh, gw = native_grid(*_size(img), max_patches)
  return _resized(img, gh * p, gw * p, recipe).astype(np.float32) * np.float32(1 / 255.0)


def patch_rows(img: np.ndarray, patch: int, max_patches: int):
  """[gh p, gw p, C] -> (patches float32 [N, p*p*C], grid int32 [2] = (gh, gw)): p x p
  patches numbered row-major with values (dy, dx, c), as mmjax.tokenizers.patchify_image cuts
  them, zero-padded to N = max_patches rows."""
  p, (h, w, c) = int(patch), img.shape
  gh, gw = h // p, w // p
  if gh * p != h or gw * p != w or gh * gw > max_patches:
    raise ValueError(f"an image of {h}x{w} is not a grid of at most {max_patches} patches of "
                     f"{p}x{p}; set data.image_size to a multiple of the patch size whose grid "
                     "fits data.max_patches")
  out = np.zeros((int(max_patches), p * p * c), np.float32)
  out[:gh * gw] = img.reshape(gh, p, gw, p, c).transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
  return out, np.asarray([gh, gw], np.int32)


def _cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5, elementwise."""
  a, x = -0.5, np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def aa_weights(n_in: int, n_out: int):
  """Fixed-point antialiased bicubic weights ([n_out, n_in] float64 holding int16 values, p):
  output i is sum_j W[i, j] x[j] / 2^p. The kernel is stretched by max(1, n_in / n_out) and
  spans 2 stretched pixels each side of the centre (i + 0.5) n_in / n_out; each row is
  normalized to sum 1, then scaled by 2^p (p: the most bits, up to 22, that keep twice the
  largest weight under 2^15) and rounded half away from zero."""
  scale = n_in / n_out
  stretch = max(scale, 1.0)
  centre = scale * (np.arange(n_out) + 0.5)
  lo = np.maximum((centre - 2.0 * stretch + 0.5).astype(np.int64), 0)
  hi = np.minimum((centre + 2.0 * stretch + 0.5).astype(np.int64), n_in)
  j = np.arange(n_in)
  inside = (j >= lo[:, None]) & (j < hi[:, None])
  w = np.where(inside, _cubic((j - centre[:, None] + 0.5) / stretch), 0.0)
  total = w.sum(axis=1, keepdims=True)
  w = np.where(total != 0, w / np.where(total != 0, total, 1.0), w)
  w_max, p = w.max(), 0
  while p < 22 and int(0.5 + w_max * (1 << (p + 1))) < (1 << 15):
    p += 1
  v = w * (1 << p)
  return np.trunc(np.where(v < 0, v - 0.5, v + 0.5)), p


def _aa_resample(img: np.ndarray, axis: int, n_out: int, block: int = 16) -> np.ndarray:
  """uint8 [H, W, C] resampled along `axis` to n_out: (sum + 2^(p-1)) >> p, clipped to uint8
  (exact integer arithmetic in float64), `block` outputs at a time over the inputs they use."""
  n_in = img.shape[axis]
  if n_in == n_out:
    return img
  w, p = aa_weights(n_in, n_out)
  x = np.moveaxis(img, axis, -1)                               # [..., n_in]
  out = np.empty(x.shape[:-1] + (n_out,), np.uint8)
  for s in range(0, n_out, block):
    rows = w[s:s + block]
    used = np.flatnonzero(rows.any(axis=0))
    a, b = (used[0], used[-1] + 1) if used.size else (0, 1)
    acc = x[..., a:b].astype(np.float64) @ rows[:, a:b].T + float(1 << (p - 1))
    out[..., s:s + block] = np.clip(np.floor(acc / float(1 << p)), 0, 255)
  return np.moveaxis(out, -1, axis)


def aa_bicubic_uint8(img: np.ndarray, h: int, w: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [h, w, C]: separable antialiased bicubic (`aa_weights`), width
  first, then height, each pass rounded to uint8 (torchvision's tensor resize of uint8)."""
  return _aa_resample(_aa_resample(img, 1, w), 0, h)


def normalize_image(x: np.ndarray, mean, std) -> np.ndarray:
  """[..., 3] in [0, 1] -> (x - mean) / std, float32."""
  return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def image_resize(cfg) -> str:
  """The config's data.image_resize (a config saved before the key: 'pil')."""
  return cfg.get("image_resize", "pil")


def max_patches(cfg) -> int:
  """The config's data.max_patches (0: square images of data.image_size; a config saved
  before the key: 0)."""
  return int(cfg.get("max_patches", 0))


def rows_image(rows: np.ndarray, grid, channels: int = 3) -> np.ndarray:
  """The inverse of `patch_rows`: patch rows [N, p*p*C] of grid (gh, gw) -> [gh p, gw p, C]."""
  gh, gw = (int(g) for g in grid)
  p = int(round(np.sqrt(rows.shape[1] / channels)))
  return (rows[:gh * gw].reshape(gh, gw, p, p, channels).transpose(0, 2, 1, 3, 4)
          .reshape(gh * p, gw * p, channels))


class CutPatches:
  """Example -> example with its square 'image' [S, S, 3] as native-aspect patch rows
  (`patch_rows`: 'image' [N, p*p*3], 'image_patch_grid' [2]); the built-in scenes, drawn at
  data.image_size, keep their own grid. Picklable."""

  def __init__(self, patch: int, budget: int):
    self.patch, self.max_patches = int(patch), int(budget)

  def __call__(self, ex: Dict[str, Any]) -> Dict[str, Any]:
    if "image" not in ex:
      return ex
    out = dict(ex)
    out["image"], out["image_patch_grid"] = patch_rows(ex["image"], self.patch, self.max_patches)
    return out


def jpeg_draft(cfg) -> bool:
  """The config's data.jpeg_draft (a config saved before the key: False, a full decode)."""
  return bool(cfg.get("jpeg_draft", False))


def model_image(obj, cfg, builtin_stats: bool = False, where: str = ""):
  """An external image (bytes | path | PIL image | array) as a model trained on `cfg`'s data
  sees one: resized to data.image_size by data.image_resize (`resize_image`), then normalized
  with data.image_mean / image_std, or with the built-in scenes' own pixel statistics when
  builtin_stats (a model trained on data.source='builtin' saw those). With data.max_patches:
  (patch rows [N, p*p*3], grid [2]) of the native-aspect image (`native_image`,
  `patch_rows`)."""
  if max_patches(cfg):
    img = native_image(obj, cfg.patch_size, cfg.max_patches, image_resize(cfg), where,
                       jpeg_draft(cfg))
    return patch_rows(_normalized(img, cfg, builtin_stats), cfg.patch_size, cfg.max_patches)
  img = resize_image(obj, cfg.image_size, image_resize(cfg), where, jpeg_draft(cfg))
  return _normalized(img, cfg, builtin_stats)


def _normalized(img, cfg, builtin_stats: bool) -> np.ndarray:
  if builtin_stats:
    from mmjax.data import builtin  # pylint: disable=import-outside-toplevel
    mean, std = builtin.PIXEL_STATS[cfg.task]
    return ((img - mean) / std).astype(np.float32)
  return normalize_image(img, cfg.image_mean, cfg.image_std)


# ----------------------------------------------------------------------------- video

def frame_indices(total: int, num_frames: int) -> np.ndarray:
  """num_frames indices spread evenly over [0, total) (repeats when the clip is short)."""
  return np.round(np.linspace(0, max(total - 1, 0), num_frames)).astype(np.int64)


def load_video(obj, num_frames: int, where: str = ""):
  """array [T, H, W, C] | .npy path | folder of frames -> list of num_frames uint8 [H, W, 3]."""
  if isinstance(obj, (str, os.PathLike)):
    path = os.fspath(obj)
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS))
      if not names:
        raise ValueError(one_line(f"video folder {path} {where} has no frame images "
                                   f"({', '.join(IMAGE_EXTS)}); add frames or fix the path"))
      return [load_image(os.path.join(path, names[i]), where)
              for i in frame_indices(len(names), num_frames)]
    if not path.endswith(".npy"):
      raise ValueError(one_line(f"unsupported video file {path} {where}; use a .npy "
                                 "[T, H, W, 3] array or a folder of frame images"))
    obj = _load_npy(path, where)
  arr = np.asarray(obj)
  if arr.ndim != 4:
    raise ValueError(one_line(f"video {where} has shape {arr.shape}; expected [T, H, W, C]"))
  return [load_image(arr[i], where) for i in frame_indices(arr.shape[0], num_frames)]


def _load_npy(path: str, where: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise FileNotFoundError(one_line(f"file not found: {path} {where}; fix the path")) from None
  except Exception as e:
    raise ValueError(one_line(f"cannot read {path} {where} ({type(e).__name__}: {e}); "
                               "replace it with a valid .npy file")) from None


# ----------------------------------------------------------------------------- audio

def load_audio(obj, cfg, rate: int | None = None, where: str = "") -> np.ndarray:
  """waveform [N] | spectrogram [T, F] | .wav / .npy path -> normalized log-mel [A, F] float32."""
  if isinstance(obj, (str, os.PathLike)):
    path = os.fspath(obj)
    if path.lower().endswith(".wav"):
      try:
        obj, rate = audio_lib.read_wav(path)
      except FileNotFoundError:
        raise FileNotFoundError(
            one_line(f"audio file not found: {path} {where}; fix the path")) from None
      except Exception as e:
        raise ValueError(one_line(f"cannot read WAV {path} {where} ({type(e).__name__}: {e}); "
                                   "use 8/16/32-bit PCM WAV")) from None
    elif path.endswith(".npy"):
      obj = _load_npy(path, where)
    else:
      raise ValueError(one_line(f"unsupported audio file {path} {where}; use .wav or .npy"))
  x = np.asarray(obj)
  is_wave = x.ndim == 1 or (x.ndim == 2 and x.shape[1] <= 2 < cfg.mel_bins)  # mono / stereo
  if is_wave:
    if np.issubdtype(x.dtype, np.integer):
      x = x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)
    x = x.reshape(x.shape[0], -1).mean(axis=1)
    spec = audio_lib.log_mel(x, int(rate or cfg.sample_rate), cfg.mel_bins, cfg.audio_frames,
                             fmax=cfg.sample_rate / 2)
  elif x.ndim == 2:
    if x.shape[1] != cfg.mel_bins:
      raise ValueError(one_line(
          f"spectrogram {where} has {x.shape[1]} mel bins but data.mel_bins={cfg.mel_bins}; "
          "regenerate it or change data.mel_bins"))
    spec = audio_lib.fit_frames(x.astype(np.float32), cfg.audio_frames)
  else:
    raise ValueError(one_line(f"audio {where} has shape {x.shape}; expected a waveform [N] or "
                               "a spectrogram [T, F]"))
  return audio_lib.normalize_spectrogram(spec)


# ----------------------------------------------------------------------------- text

def pick_text(value) -> str:
  """str | bytes | sequence of them -> one str (the first of a sequence)."""
  if isinstance(value, np.ndarray) and value.ndim > 0 or isinstance(value, (list, tuple)):
    value = value[0] if len(value) else ""
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  return str(value)


def pick_texts(value, limit: int) -> list:
  """str | bytes | sequence of them -> list of 1..limit str (the first `limit`; [''] if none)."""
  if isinstance(value, np.ndarray) and value.ndim > 0 or isinstance(value, (list, tuple)):
    items = list(value)[:limit]
  else:
    items = [value]
  return [pick_text(v) for v in items] or [""]


# ----------------------------------------------------------------------------- labels

def parse_label(value, where: str = "") -> np.int32:
  """An integer class id (int, integral float, numpy scalar) -> int32; else a one-line error."""
  x = np.asarray(value)
  ok = x.ndim == 0 and (np.issubdtype(x.dtype, np.integer) or (
      np.issubdtype(x.dtype, np.floating) and np.isfinite(x) and float(x).is_integer()))
  if not ok or not -2**31 <= int(x) < 2**31:
    raise ValueError(one_line(f"bad label {value!r} {where}: not an integer class id; "
                               "write an int such as 3"))
  return np.int32(x)


# ----------------------------------------------------------------------------- preprocessor

SKIP = "_skip"  # key of the sentinel a bad example becomes under data.on_error='skip'


class Preprocessor:
  """(index, raw example) -> model-ready example (see module doc). Picklable.

  data.on_error='skip': an example that cannot be decoded (or a source row with '_error')
  becomes {SKIP: one-line reason}, which the pipeline drops and counts."""

  def __init__(self, cfg, split: str = "test"):
    self.cfg, self.split = cfg, split
    self._tok = None

  @property
  def tokenizer(self):
    if self._tok is None:
      self._tok = text_lib.from_config(self.cfg)
    return self._tok

  def __getstate__(self):
    return {"cfg": self.cfg, "split": self.split, "_tok": None}

  def patch_budget(self, index: int) -> int:
    """Example `index`'s patch budget: data.max_patches, or in training with data.min_patches
    set, drawn uniformly from [min_patches, max_patches] (seeded by builtin_seed and the
    index: NaViT's per-example resolution)."""
    lo, hi = int(self.cfg.get("min_patches", 0)), int(self.cfg.max_patches)
    if self.split != "train" or not lo or lo >= hi:
      return hi
    return int(np.random.default_rng([int(self.cfg.builtin_seed), int(index)]).integers(lo, hi + 1))

  def __call__(self, index: int, raw: Dict[str, Any]) -> Dict[str, Any]:
    if self.cfg.get("on_error", "stop") != "skip":
      return self.decode(index, raw)
    try:
      if "_error" in raw:
        raise ValueError(raw["_error"])
      return self.decode(index, raw)
    except Exception as e:  # pylint: disable=broad-except
      msg, where = one_line(e) or type(e).__name__, raw.get("_where", "")
      return {SKIP: msg if where in msg else f"{msg} {where}"}

  def regions(self, raw: Dict[str, Any], where: str, window) -> Dict[str, np.ndarray]:
    """data.regions: the example's regions (boxes mapped through the image's crop `window`;
    None: the whole image is kept, as in native aspect) in data.max_objects slots."""
    if "regions" not in raw:
      raise ValueError(f"example {where} has no regions, and data.regions=True: give every "
                       'example "regions": [{"box": [y0, x0, y1, x1], "caption": "..."}] or '
                       "set data.regions=False")
    boxes, captions = regions_lib.parse_regions(raw["regions"], where)
    if window is not None:
      boxes = regions_lib.crop_boxes(boxes, window, self.cfg.image_size)
    return regions_lib.region_arrays(boxes, captions, int(self.cfg.max_objects),
                                     self.tokenizer, self.cfg.text_len)

  def decode(self, index: int, raw: Dict[str, Any]) -> Dict[str, Any]:
    """The model-ready example; a bad one raises a one-line error naming where it is."""
    cfg, where = self.cfg, raw.get("_where", "")
    out: Dict[str, Any] = {}
    window = None
    if "image" in raw and max_patches(cfg):
      budget = self.patch_budget(raw.get("_index", index))
      img = native_image(raw["image"], cfg.patch_size, budget, image_resize(cfg), where,
                         jpeg_draft(cfg))
      out["image"], out["image_patch_grid"] = patch_rows(
          normalize_image(img, cfg.image_mean, cfg.image_std), cfg.patch_size, cfg.max_patches)
    elif "image" in raw:
      img, window = resize_image_window(raw["image"], cfg.image_size, image_resize(cfg), where,
                                        jpeg_draft(cfg))
      out["image"] = normalize_image(img, cfg.image_mean, cfg.image_std)
    if cfg.get("regions", False):
      out.update(self.regions(raw, where, None if max_patches(cfg) else window))
    if "video" in raw:
      frames = load_video(raw["video"], cfg.num_frames, where)
      vid = np.stack([resize_image(f, cfg.image_size, image_resize(cfg), draft=jpeg_draft(cfg))
                      for f in frames])
      out["video"] = normalize_image(vid, cfg.image_mean, cfg.image_std)
    if "audio" in raw:
      out["audio"] = load_audio(raw["audio"], cfg, raw.get("audio_rate"), where)
    if "text" in raw and int(cfg.get("max_captions", 1)) > 1:
      captions = pick_texts(raw["text"], int(cfg.max_captions))
      texts = np.full((int(cfg.max_captions), cfg.text_len), self.tokenizer.pad_id, np.int32)
      for i, c in enumerate(captions):
        texts[i] = self.tokenizer.encode(c, cfg.text_len)
      out["text"], out["texts"] = texts[0].copy(), texts
      out["num_captions"] = np.int32(len(captions))
      if cfg.include_caption:
        out["caption"] = np.asarray(captions[0])
    elif "text" in raw:
      caption = pick_text(raw["text"])
      out["text"] = self.tokenizer.encode(caption, cfg.text_len)
      if cfg.include_caption:
        out["caption"] = np.asarray(caption)
    if "label" in raw:
      out["label"] = parse_label(raw["label"], where)
    out["index"] = np.int32(raw.get("_index", index))
    return out
