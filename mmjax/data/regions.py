"""Regions of an example (data.regions): boxes with a caption each, the data of LocCa's
region tasks and the region evaluators.

A source gives them as [{"box": [y0, x0, y1, x1], "caption": str}, ...], the box in [0, 1] of
the whole image (`parse_regions`); the preprocessor maps boxes through the image's centre
crop (`crop_boxes`) and fills data.max_objects slots (`region_arrays`): 'region_boxes'
float32 [R, 4], 'region_text' int32 [R, L], 'region_valid' bool [R].
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from mmjax.data import text as text_lib


def parse_regions(value, where: str = ""):
  """A manifest's 'regions' [{"box": [y0, x0, y1, x1], "caption": str}, ...] (box in [0, 1]
  of the whole source image, y0 <= y1, x0 <= x1) -> (boxes float32 [n, 4], captions [n]);
  else a one-line error naming the fix (the bad value shown as a repr: no raw newline)."""
  fix = ('write "regions": [{"box": [y0, x0, y1, x1], "caption": "..."}] with the box in '
         "[0, 1] of the image")
  if not isinstance(value, (list, tuple)):
    raise ValueError(f"bad regions {str(value)[:60]!r} {where}: not a list; {fix}")
  boxes, captions = [], []
  for r in value:
    box = np.asarray(r.get("box", ()) if isinstance(r, dict) else (), np.float64)
    ok = (isinstance(r, dict) and isinstance(r.get("caption"), str) and box.shape == (4,)
          and np.isfinite(box).all() and box.min() >= 0 and box.max() <= 1
          and box[0] <= box[2] and box[1] <= box[3])
    if not ok:
      raise ValueError(f"bad region {str(r)[:80]!r} {where}; {fix}")
    boxes.append(box.astype(np.float32))
    captions.append(r["caption"])
  return np.asarray(boxes, np.float32).reshape(-1, 4), captions


def region_arrays(boxes: np.ndarray, captions, slots: int, tokenizer, text_len: int
                  ) -> Dict[str, np.ndarray]:
  """The first `slots` regions as 'region_boxes' [R, 4], 'region_text' [R, L] and
  'region_valid' [R] (R = slots; a box cropped to nothing is not valid)."""
  n = min(len(captions), slots)
  out_boxes = np.zeros((slots, 4), np.float32)
  out_boxes[:n] = boxes[:n]
  valid = np.zeros(slots, bool)
  valid[:n] = (out_boxes[:n, 2] > out_boxes[:n, 0]) & (out_boxes[:n, 3] > out_boxes[:n, 1])
  text = text_lib.encode_batch(tokenizer, list(captions[:n]) + [""] * (slots - n), text_len)
  text[~valid] = 0
  return {"region_boxes": out_boxes, "region_text": text, "region_valid": valid}


def crop_boxes(boxes: np.ndarray, window, size: int) -> np.ndarray:
  """Boxes [R, 4] (y0, x0, y1, x1 in [0, 1] of the source image) -> the same objects' boxes in
  the size x size crop `window` (decode.resize_image_window) of it, clipped to [0, 1]."""
  top, left, nh, nw = window
  scale = np.asarray([nh, nw, nh, nw], np.float32)
  shift = np.asarray([top, left, top, left], np.float32)
  return np.clip((boxes * scale - shift) / np.float32(size), 0.0, 1.0)
