"""Random-access sources of raw examples (see mmjax.data.decode for the raw format).

  TfdsSource   a TFDS dataset prepared as ArrayRecord in a data_dir (`tfds.data_source`, no
               TensorFlow, never downloads); data.feature_keys maps output names to features
               ('caption' or nested 'captions/text').
  JsonlSource  a manifest, one JSON object per line: {"image": "rel/a.png", "video": "rel/clip.npy"
               or "rel/frames_dir", "audio": "rel/a.wav" or "rel/a.npy", "caption": "...",
               "label": 3, "regions": [{"box": [y0, x0, y1, x1], "caption": "..."}]}; paths relative to the manifest's folder; all keys optional.
  FolderSource an image folder with one sub-folder per class (ImageNet's layout:
               root/<class>/<image>): 'image' (a path) and 'label' (the class folder's index
               in sorted order); class names: the folder names.
  WdsSource / ArrayRecordSource  sharded archives (mmjax.data.shards).
All return dicts keyed by output name plus '_where' (for error messages).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from mmjax.data.decode import one_line

JSONL_KEYS = {"image": "image", "video": "video", "audio": "audio", "caption": "text",
              "text": "text", "label": "label", "regions": "regions"}


def split_name(cfg, split: str) -> str:
  """'train' -> data.tfds_split_train; 'test' / 'eval' -> data.tfds_split_eval."""
  return cfg.tfds_split_train if split == "train" else cfg.tfds_split_eval


def source_class_names(cfg, split: str = "test") -> Optional[Tuple[str, ...]]:
  """The class names a source carries itself, in label order: the built-in task's, a TFDS
  ClassLabel's; None for a JSONL manifest or a TFDS label without names."""
  if cfg.source == "builtin":
    from mmjax.data import builtin  # pylint: disable=g-import-not-at-top
    return tuple(builtin.class_names(cfg.task))
  if cfg.source == "tfds":
    return TfdsSource(cfg, split).class_names
  if cfg.source == "folder":
    return FolderSource(folder_path(cfg, split)).class_names
  if cfg.source in ("wds", "array_record"):  # written by mmjax.data.write --from=folder
    from mmjax.data import shards  # pylint: disable=g-import-not-at-top
    first = shards.shard_paths(shard_spec(cfg, split), shard_key(cfg, split))[0]
    path = os.path.join(os.path.dirname(first), "classes.txt")
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        return tuple(line.strip() for line in f if line.strip())
  return None


def shard_key(cfg, split: str) -> str:
  """The config key naming the shards of `split` (data.wds_shards, data.wds_eval_shards, ...)."""
  base = "wds_shards" if cfg.source == "wds" else "array_record_paths"
  ev = "wds_eval_shards" if cfg.source == "wds" else "array_record_eval_paths"
  return f"data.{ev}" if split != "train" and cfg[ev] else f"data.{base}"


def shard_spec(cfg, split: str):
  return cfg[shard_key(cfg, split)[len("data."):]]


def folder_path(cfg, split: str) -> str:
  return cfg.folder_eval_path if split != "train" and cfg.folder_eval_path else cfg.folder_path


# ----------------------------------------------------------------------------- TFDS

def _lookup(tree, path: str):
  for part in path.split("/"):
    tree = tree[part]
  return tree


def _feature_names(features, prefix: str = "") -> List[str]:
  """All feature paths of a FeaturesDict, nested ones joined with '/'."""
  out = []
  for k, f in features.items():
    name = prefix + k
    out.append(name)
    inner = getattr(f, "feature", f)  # Sequence(FeaturesDict) -> FeaturesDict
    if hasattr(inner, "items") and callable(inner.items):
      out.extend(_feature_names(inner, name + "/"))
  return out


class TfdsSource:
  """len(src), src[i] -> {'image': uint8 array, 'text': bytes, 'label': int, ...} from TFDS."""

  def __init__(self, cfg, split: str):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.name, self.split = cfg.tfds_name, split_name(cfg, split)
    data_dir = os.path.expanduser(cfg.tfds_data_dir)
    base = self.name.split(":")[0].split("/")[0]
    if not os.path.isdir(os.path.join(data_dir, base)):
      raise FileNotFoundError(
          f"TFDS dataset {self.name!r} is not prepared in {data_dir} (no folder {base}/); "
          "prepare it there with file_format='array_record' or fix data.tfds_name / tfds_data_dir")
    try:
      self._ds = tfds.data_source(self.name, split=self.split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds messages span lines (lists of datasets): keep the first
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(one_line(
          f"cannot open TFDS {self.name!r} split {self.split!r} in {data_dir}: {first}; prepare "
          "it as ArrayRecord or fix data.tfds_name / tfds_split_train / tfds_split_eval")) from None
    features = self._ds.dataset_info.features
    names = _feature_names(features)
    self.keys = dict(cfg.feature_keys)
    for out, feat in self.keys.items():
      if feat not in names:
        raise ValueError(f"TFDS {self.name!r} has no feature {feat!r} (data.feature_keys.{out}); "
                         f"available: {', '.join(names)}; fix data.feature_keys")
    self.audio_rate = None
    if "audio" in self.keys:
      self.audio_rate = getattr(_lookup(features, self.keys["audio"]), "sample_rate", None)

  @property
  def class_names(self) -> Optional[Tuple[str, ...]]:
    """The label feature's names when it is a tfds ClassLabel (in label order), else None."""
    if "label" not in self.keys:
      return None
    names = getattr(_lookup(self._ds.dataset_info.features, self.keys["label"]), "names", None)
    return tuple(str(n) for n in names) if names else None

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    rec = self._ds[int(index)]
    raw = {out: _lookup(rec, feat) for out, feat in self.keys.items()}
    if self.audio_rate:
      raw["audio_rate"] = self.audio_rate
    raw["_where"] = f"(TFDS {self.name} {self.split} #{index})"
    return raw


# ----------------------------------------------------------------------------- JSONL

class JsonlSource:
  """len(src), src[i] -> raw dict from one manifest line (paths made absolute, checked to exist).

  on_error='skip': a bad line (bad JSON, missing file) becomes {'_where', '_error'} (dropped
  and counted by the pipeline) instead of raising."""

  def __init__(self, path: str, on_error: str = "stop"):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
      raise FileNotFoundError(f"JSONL manifest not found: {path}; fix data.jsonl_path")
    self.root = os.path.dirname(path)
    self.path, self.rows = path, []
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"(line {n} of {path})"
        try:
          obj = self._parse(line, where)
        except (ValueError, FileNotFoundError) as e:
          if on_error != "skip":
            raise
          self.rows.append({"_where": where, "_error": str(e)})
          continue
        self.rows.append(obj)
    good = [r for r in self.rows if "_error" not in r]
    if not good:
      raise ValueError(f"JSONL manifest {path} has no examples; add one JSON object per line, "
                       'e.g. {"image": "img/0.png", "caption": "a cat", "label": 0}')
    kinds = {frozenset(k for k in r if k != "_where") for r in good}
    if len(kinds) > 1:
      raise ValueError(f"JSONL manifest {path} mixes lines with different keys "
                       f"({sorted(map(sorted, kinds))}); give every line the same keys")

  def _parse(self, line: str, where: str) -> Dict[str, Any]:
    """One manifest line -> raw dict; one-line ValueError / FileNotFoundError if bad."""
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(
          f"bad JSON {where}: {one_line(e)}; write one JSON object per line") from None
    if not isinstance(obj, dict):
      raise ValueError(f"{where} is not a JSON object; write one object per line")
    unknown = sorted(set(obj) - set(JSONL_KEYS))
    if unknown:
      raise ValueError(f"unknown manifest key(s) {unknown} {where}; use "
                       f"{', '.join(sorted(JSONL_KEYS))}")
    row: Dict[str, Any] = {"_where": where}
    for key, value in obj.items():
      if key in ("image", "video", "audio"):
        value = os.path.join(self.root, value)
        if not os.path.exists(value):
          raise FileNotFoundError(f"{key} file not found: {value} {where}; fix the path "
                                  "(relative to the manifest's folder) or remove the line")
      row[JSONL_KEYS[key]] = value
    return row

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return self.rows[int(index)]


# ----------------------------------------------------------------------------- image folder

class FolderSource:
  """len(src), src[i] -> {'image': path, 'label': class index} of root/<class>/<image>; the
  classes are the sub-folders in sorted order, images sorted by name within each."""

  def __init__(self, root: str):
    from mmjax.data.decode import IMAGE_EXTS  # pylint: disable=g-import-not-at-top
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
      raise FileNotFoundError(f"image folder not found: {root}; fix data.folder_path")
    self.root = root
    self.class_names = tuple(sorted(d for d in os.listdir(root)
                                    if os.path.isdir(os.path.join(root, d))))
    if not self.class_names:
      raise ValueError(f"image folder {root} has no class sub-folders; lay it out as "
                       "root/<class>/<image>")
    self.items: List[Tuple[str, int]] = []
    for label, name in enumerate(self.class_names):
      folder = os.path.join(root, name)
      self.items.extend((os.path.join(folder, f), label) for f in sorted(os.listdir(folder))
                        if f.lower().endswith(IMAGE_EXTS))
    if not self.items:
      raise ValueError(f"image folder {root} has class folders but no images "
                       f"({', '.join(IMAGE_EXTS)})")

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    path, label = self.items[int(index)]
    return {"image": path, "label": label, "_where": f"({path})"}
