"""Standard evaluation sets by name: eval configs and the Karpathy-split converter.

  python -m mmjax.data.standard karpathy --json=dataset_flickr30k.json --images=DIR \
      --split=test --out=manifest.jsonl
  python eval.py --workdir=RUN --eval_config=configs/flickr30k_retrieval.py:jsonl=manifest.jsonl

An eval config (configs/coco_retrieval.py, flickr30k_retrieval.py, imagenet_zeroshot.py) is a
file whose get_config(ARG) returns a ConfigDict with `data` and `eval` sections holding only
the keys it sets; eval.py --eval_config=FILE[:ARG] applies them to the checkpoint's config
before any --config.KEY=VALUE (which wins). ARG names the copy on disk: 'tfds=DATA_DIR',
'jsonl=MANIFEST' or 'folder=ROOT' (whichever kinds the set allows).

Karpathy split JSON (dataset_coco.json / dataset_flickr30k.json): {"images": [{"filename",
"filepath"? (COCO: 'val2014'), "split": train | val | test | restval, "sentences": [{"raw"}]}]}
-> one manifest line per image of the split: {"image": path relative to the manifest,
"caption": [raw sentence, ...]}.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Dict, Sequence, Tuple

KARPATHY_SPLITS = ("train", "val", "test", "restval")


def karpathy_to_jsonl(json_path: str, images: str, split: str, out: str) -> int:
  """Writes the manifest of `split` ('test', or several: 'train,restval'); returns its rows.
  Every image must exist under `images` (at filepath/filename, or filename)."""
  splits = tuple(s.strip() for s in split.split(",") if s.strip())
  bad = [s for s in splits if s not in KARPATHY_SPLITS]
  if not splits or bad:
    raise ValueError(f"unknown Karpathy split {split!r}; use {', '.join(KARPATHY_SPLITS)} "
                     "(comma-separated for several)")
  try:
    with open(os.path.expanduser(json_path), encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"Karpathy split file not found: {json_path}; pass --json="
                            "dataset_coco.json or dataset_flickr30k.json") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{json_path} is not JSON ({' '.join(str(e).split())}); pass the "
                     "Karpathy split file dataset_*.json") from None
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise ValueError(f"{json_path} has no 'images' list; pass the Karpathy split file "
                     "(dataset_coco.json / dataset_flickr30k.json)")
  images = os.path.abspath(os.path.expanduser(images))
  out = os.path.abspath(os.path.expanduser(out))
  root = os.path.dirname(out)
  rows = []
  for n, im in enumerate(data["images"]):
    if im.get("split") not in splits:
      continue
    if "filename" not in im or not im.get("sentences"):
      raise ValueError(f"image entry {n} of {json_path} lacks 'filename' or 'sentences'; "
                       "pass an unmodified Karpathy split file")
    path = os.path.join(images, im.get("filepath", ""), im["filename"])
    if not os.path.isfile(path):
      raise FileNotFoundError(f"image not found: {path} (entry {n} of {json_path}); point "
                              "--images at the folder holding the images (COCO: the one with "
                              "val2014/ and train2014/)")
    captions = [" ".join(str(s["raw"]).split()) for s in im["sentences"]]
    rows.append({"image": os.path.relpath(path, root), "caption": captions})
  if not rows:
    raise ValueError(f"{json_path} has no images in split {split!r}; check --split")
  os.makedirs(root, exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return len(rows)


# ----------------------------------------------------------------------------- eval configs

def source_arg(arg: str, kinds: Sequence[str], what: str) -> Tuple[str, str]:
  """'KIND=PATH' -> (KIND, expanded PATH), KIND in kinds; else a one-line ValueError."""
  kind, eq, path = (arg or "").partition("=")
  if not eq or kind not in kinds or not path:
    forms = " or ".join(f"{k}=PATH" for k in kinds)
    raise ValueError(f"{what} needs its copy on disk after the colon ({forms}), got {arg!r}; "
                     f"e.g. --eval_config=configs/{what}.py:{kinds[0]}=PATH")
  return kind, os.path.expanduser(path)


def eval_source(kind: str, path: str, tfds: Dict[str, Any] = None) -> Dict[str, Any]:
  """The `data` keys of a standard set's copy at `path`: tfds=DATA_DIR (with `tfds`: name,
  split, feature keys), jsonl=MANIFEST, folder=ROOT, wds=SHARDS (a brace pattern or folder of
  tars, e.g. written by python -m mmjax.data.write from the folder or manifest)."""
  if kind == "tfds":
    return {"source": "tfds", "tfds_data_dir": path, **(tfds or {})}
  if kind == "jsonl":
    return {"source": "jsonl", "jsonl_path": path, "jsonl_eval_path": path}
  if kind == "folder":
    return {"source": "folder", "folder_path": path, "folder_eval_path": path}
  if kind == "wds":
    return {"source": "wds", "wds_shards": path, "wds_eval_shards": path}
  raise ValueError(f"unknown copy kind {kind!r}; use tfds, jsonl, folder or wds")


def eval_overrides(spec: str) -> Dict[str, Any]:
  """--eval_config=FILE[:ARG] (or a name under mmjax/configs) -> flat overrides
  {'data.source': ..., 'eval.evaluators': ...} of its get_config(ARG)'s sections."""
  path, _, arg = spec.partition(":")
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  file = path if path.endswith(".py") else os.path.join(here, f"{path}.py")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"eval config {path} not found; pass a file such as "
                            "configs/coco_retrieval.py or a name such as coco_retrieval")
  mod_spec = importlib.util.spec_from_file_location("mmjax_eval_config", file)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"eval config {file} has no get_config(); see configs/coco_retrieval.py")
  config = module.get_config(arg) if arg else module.get_config()
  out: Dict[str, Any] = {}
  for section, keys in config.items():
    if section not in ("data", "eval"):
      raise ValueError(f"eval config {file} sets section {section!r}; an eval config sets only "
                       "'data' and 'eval' keys")
    for k, v in keys.items():
      out[f"{section}.{k}"] = v.to_dict() if hasattr(v, "to_dict") else v
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m mmjax.data.standard", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  k = sub.add_parser("karpathy", help="Karpathy split JSON -> JSONL manifest with caption lists")
  k.add_argument("--json", required=True, help="dataset_coco.json / dataset_flickr30k.json")
  k.add_argument("--images", required=True, help="image folder (COCO: holds val2014/ ...)")
  k.add_argument("--split", default="test", help="test | val | train | restval (a,b: several)")
  k.add_argument("--out", required=True, help="manifest to write (.jsonl)")
  args = p.parse_args(argv)
  try:
    n = karpathy_to_jsonl(args.json, args.images, args.split, args.out)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  print(f"wrote {n} images to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
