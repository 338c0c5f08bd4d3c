"""Decoding and preprocessing of external examples (TFDS records, JSONL manifest entries).

A raw example maps output names to raw values:
  image  encoded bytes | file path | uint8/float array [H, W, C]
  video  array [T, H, W, C] | .npy path | folder of frame images
  audio  waveform [N] (with 'audio_rate') | spectrogram [T, F] | .wav / .npy path
  text   str | bytes | sequence of them (the first is used; up to data.max_captions of them)
  label  int
`Preprocessor(cfg)(index, raw)` turns it into model inputs: 'image' float32 [S, S, 3],
'video' float32 [T, S, S, 3], 'audio' float32 [A, F], 'text' int32 [L], 'label' int32 [],
'index' int32 [] (and 'caption' when cfg.include_caption). With C = data.max_captions > 1 also
'texts' int32 [C, L] (the first C captions, missing rows all PAD) and 'num_captions' int32 []
(>= 1; an empty list counts as one empty caption); 'text' is then the first caption.
"""
from __future__ import annotations

import io
import os
from typing import Any, Dict

import numpy as np
from PIL import Image

from mmjax.data import audio as audio_lib
from mmjax.data import text as text_lib

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def one_line(s: str) -> str:
  """`s` (or an exception) as one line: runs of whitespace, newlines included, become a space."""
  return " ".join(str(s).split())


# ----------------------------------------------------------------------------- images

def load_image(obj, where: str = "") -> np.ndarray:
  """bytes | path | array -> uint8 RGB [H, W, 3]; unreadable input -> one-line ValueError."""
  if isinstance(obj, np.ndarray):
    arr = obj
    if arr.dtype != np.uint8:
      arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
      arr = arr[..., None]
    if arr.shape[-1] == 1:
      arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])
  try:
    src = io.BytesIO(obj) if isinstance(obj, (bytes, bytearray)) else obj
    with Image.open(src) as im:
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    raise FileNotFoundError(
        one_line(f"image file not found: {obj} {where}; fix the path")) from None
  except Exception as e:  # PIL raises several types for bad data
    name = obj if isinstance(obj, (str, os.PathLike)) else f"<{len(obj)} bytes>"
    raise ValueError(one_line(
        f"cannot read image {name} {where} ({type(e).__name__}: {e}); "
        "replace the file with a valid PNG/JPEG or remove the entry")) from None


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1]: shorter side to size, centre crop."""
  h, w = img.shape[:2]
  if (h, w) != (size, size):
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img[top:top + size, left:left + size]
  return img.astype(np.float32) * np.float32(1 / 255.0)


def normalize_image(x: np.ndarray, mean, std) -> np.ndarray:
  """[..., 3] in [0, 1] -> (x - mean) / std, float32."""
  return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def model_image(obj, cfg, builtin_stats: bool = False, where: str = "") -> np.ndarray:
  """An external image (bytes | path | array) as a model trained on `cfg`'s data sees one:
  resized and centre-cropped to data.image_size, then normalized with data.image_mean /
  image_std, or with the built-in scenes' own pixel statistics when builtin_stats (a model
  trained on data.source='builtin' saw those)."""
  img = resize_center_crop(load_image(obj, where), cfg.image_size)
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

  def __init__(self, cfg):
    self.cfg = cfg
    self._tok = None

  @property
  def tokenizer(self):
    if self._tok is None:
      self._tok = text_lib.from_config(self.cfg)
    return self._tok

  def __getstate__(self):
    return {"cfg": self.cfg, "_tok": None}

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

  def decode(self, index: int, raw: Dict[str, Any]) -> Dict[str, Any]:
    """The model-ready example; a bad one raises a one-line error naming where it is."""
    cfg, where = self.cfg, raw.get("_where", "")
    out: Dict[str, Any] = {}
    if "image" in raw:
      img = resize_center_crop(load_image(raw["image"], where), cfg.image_size)
      out["image"] = normalize_image(img, cfg.image_mean, cfg.image_std)
    if "video" in raw:
      frames = load_video(raw["video"], cfg.num_frames, where)
      vid = np.stack([resize_center_crop(f, cfg.image_size) for f in frames])
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
