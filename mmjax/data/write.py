"""Write a JSONL manifest or an image folder as shards: webdataset tars or ArrayRecord files.

  python -m mmjax.data.write --from=jsonl --src=data/train.jsonl --to=wds --out=shards/train
  python -m mmjax.data.write --from=folder --src=imagenet/train --to=wds --out=shards/in1k \\
      --caption_template='a photo of a {}.'
  python -m mmjax.data.write --from=jsonl --src=data/train.jsonl --to=array_record --out=ar/

Examples keep the source's order; example i gets key %09d of i and lands in shard
i // --shard_size. Members (mmjax.data.shards reads them back):
  image   the file's bytes as they are (jpg / jpeg / png / webp; other formats become png)
  text    .txt, or .json {"captions": [...]} for a list of captions
  label   .cls (the class id as text)
  regions .json {"regions": [{"box": [y0, x0, y1, x1], "caption": ...}, ...]} (beside the
          captions when those are a list)
  video   .npy: the .npy file as it is, or a folder of frames stacked to uint8 [T, H, W, 3]
  audio   .wav / .npy as they are
--from=folder reads root/<class>/<image> (labels: class folders in sorted order) and writes
classes.txt beside the shards (zero-shot class names). A tar is written as NAME.tmp and renamed
when complete; entries carry no time stamps or owners, so the same input gives the same bytes.
The last stdout line is the value for data.wds_shards / data.array_record_paths.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from typing import Any, Dict, Iterator, Tuple

import numpy as np

from mmjax.data import decode, sources
from mmjax.data import regions as regions_lib

KEPT_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _image_member(path: str, where: str) -> Tuple[str, bytes]:
  ext = os.path.splitext(path)[1].lower().lstrip(".")
  if ext in KEPT_IMAGE_EXTS:
    return ext, _read(path)
  buf = io.BytesIO()  # gif / bmp / ...: lossless png in the image's own mode (resizing
  im = decode.open_image(path, where)  # happens in that mode, as data.image_resize says)
  if im.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
    im = im.convert("RGB")
  im.save(buf, format="PNG")
  return "png", buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, arr, allow_pickle=False)
  return buf.getvalue()


def members(raw: Dict[str, Any]) -> Dict[str, bytes]:
  """A source's raw example (mmjax.data.sources: paths, caption(s), label) -> {ext: bytes}."""
  where, out = raw.get("_where", ""), {}
  if "image" in raw:
    ext, data = _image_member(raw["image"], where)
    out[ext] = data
  if "video" in raw:
    path = raw["video"]
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.lower().endswith(decode.IMAGE_EXTS))
      frames = [decode.load_image(os.path.join(path, n), where) for n in names]
      if not frames or len({f.shape for f in frames}) != 1:
        raise ValueError(f"video folder {path} {where} has no frames or frames of different "
                         "sizes; fix it or remove the line")
      out["npy"] = _npy_bytes(np.stack(frames))
    else:
      out["npy"] = _read(path)
  if "audio" in raw:
    ext = os.path.splitext(raw["audio"])[1].lower().lstrip(".")
    if "npy" in out and ext == "npy":
      raise ValueError(f"{where}: a .npy video and a .npy audio cannot share the npy member; "
                       "give the audio as .wav")
    out[ext] = _read(raw["audio"])
  meta: Dict[str, Any] = {}
  if "text" in raw:
    text = raw["text"]
    if isinstance(text, (list, tuple)):
      meta["captions"] = [str(t) for t in text]
    else:
      out["txt"] = str(text).encode("utf-8")
  if "regions" in raw:  # checked here, so a bad region stops the write, not the training
    boxes, captions = regions_lib.parse_regions(raw["regions"], where)
    meta["regions"] = [{"box": [float(v) for v in b], "caption": c}
                       for b, c in zip(boxes, captions)]
  if meta:
    out["json"] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
  if "label" in raw:
    out["cls"] = str(int(decode.parse_label(raw["label"], where))).encode("ascii")
  return out


def _examples(src_kind: str, src: str, caption_template: str) -> Tuple[Iterator, int, Any]:
  """(iterator of member dicts, count, class names or None)."""
  if src_kind == "jsonl":
    source = sources.JsonlSource(src)
    names = None
  else:
    source = sources.FolderSource(src)
    names = source.class_names

  def gen():
    for i in range(len(source)):
      raw = dict(source[i])
      if names is not None and caption_template:
        raw["text"] = caption_template.format(names[int(raw["label"])])
      yield members(raw)

  return gen(), len(source), names


class _TarShard:
  def __init__(self, path: str):
    self.path, self.tmp = path, path + ".tmp"
    self.tar = tarfile.open(self.tmp, mode="w", format=tarfile.PAX_FORMAT)

  def add(self, key: str, example: Dict[str, bytes]):
    for ext in sorted(example):  # a fixed member order
      info = tarfile.TarInfo(f"{key}.{ext}")
      info.size, info.mtime, info.mode = len(example[ext]), 0, 0o444
      info.uid = info.gid = 0
      info.uname = info.gname = ""
      self.tar.addfile(info, io.BytesIO(example[ext]))

  def close(self):
    self.tar.close()
    os.replace(self.tmp, self.path)


class _ArrayRecordShard:
  def __init__(self, path: str):
    from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
    self.path, self.tmp = path, path + ".tmp"
    self.writer = ArrayRecordWriter(self.tmp, "group_size:1")  # random access: one per chunk

  def add(self, key: str, example: Dict[str, bytes]):
    import msgpack  # pylint: disable=g-import-not-at-top
    self.writer.write(msgpack.packb({"__key__": key, **example}, use_bin_type=True))

  def close(self):
    self.writer.close()
    os.replace(self.tmp, self.path)


def write(src_kind: str, src: str, to: str, out: str, shard_size: int = 10_000,
          prefix: str = "shard", caption_template: str = "") -> Dict[str, Any]:
  """Write the shards; returns {'shards': paths, 'pattern': brace pattern, 'examples': n}."""
  if src_kind not in ("jsonl", "folder"):
    raise ValueError(f"unknown --from={src_kind!r}; use jsonl or folder")
  if to not in ("wds", "array_record"):
    raise ValueError(f"unknown --to={to!r}; use wds or array_record")
  if shard_size < 1:
    raise ValueError(f"--shard_size={shard_size} must be a positive number of examples")
  if caption_template and (src_kind != "folder" or "{}" not in caption_template):
    raise ValueError("--caption_template goes with --from=folder and holds '{}' for the class "
                     "name, e.g. 'a photo of a {}.'")
  src, out = os.path.expanduser(src), os.path.expanduser(out)
  examples, n, names = _examples(src_kind, src, caption_template)
  os.makedirs(out, exist_ok=True)
  ext = "tar" if to == "wds" else "array_record"
  count = (n + shard_size - 1) // shard_size
  width = max(6, len(str(count - 1)))
  shard_cls = _TarShard if to == "wds" else _ArrayRecordShard
  paths, shard = [], None
  for i, example in enumerate(examples):
    if i % shard_size == 0:
      if shard is not None:
        shard.close()
      paths.append(os.path.join(out, f"{prefix}-{len(paths):0{width}d}.{ext}"))
      shard = shard_cls(paths[-1])
    shard.add(f"{i:09d}", example)
  if shard is not None:
    shard.close()
  if names is not None:
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as f:
      f.write("".join(f"{c}\n" for c in names))
  last = f"{len(paths) - 1:0{width}d}"
  pattern = (os.path.join(out, f"{prefix}-{{{0:0{width}d}..{last}}}.{ext}") if len(paths) > 1
             else paths[0])
  return {"shards": paths, "pattern": pattern, "examples": n, "classes": names}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m mmjax.data.write", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--from", dest="src_kind", required=True, choices=("jsonl", "folder"))
  p.add_argument("--src", required=True, help="the manifest (jsonl) or the folder root")
  p.add_argument("--to", required=True, choices=("wds", "array_record"))
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--shard_size", type=int, default=10_000, help="examples per shard")
  p.add_argument("--prefix", default="shard")
  p.add_argument("--caption_template", default="",
                 help="--from=folder: a caption per image, '{}' = the class name")
  a = p.parse_args(argv)
  try:
    res = write(a.src_kind, a.src, a.to, a.out, a.shard_size, a.prefix, a.caption_template)
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  key = "data.wds_shards" if a.to == "wds" else "data.array_record_paths"
  print(f"wrote {res['examples']} examples in {len(res['shards'])} shard(s) to {a.out}"
        + (f" (+ classes.txt, {len(res['classes'])} classes)" if res["classes"] else ""))
  print(f"--config.data.source={a.to} --config.{key}='{res['pattern']}'")
  return 0


if __name__ == "__main__":
  sys.exit(main())
