"""Sharded example archives: webdataset tar shards and ArrayRecord files, read by random access.

A webdataset shard is a plain tar whose members are grouped into examples by key: the member
path up to the first dot of its file name (`dir/000123.jpg`, `dir/000123.txt` -> key
`dir/000123`, extensions `jpg`, `txt`). Consecutive members with the same key are one example.
An ArrayRecord shard (written by `python -m mmjax.data.write --to=array_record`) holds one
msgpack map per record, {'__key__': key, ext: bytes, ...}: the same members.

Both sources index their shards once (tar: one pass over the headers, no data read; ArrayRecord:
the record count), then serve example i as raw members read with one `pread` each, so the grain
pipeline above shuffles across and within shards and resumes exactly at any example.

Members -> raw example (`members_to_raw`), by extension (`data.member_exts`):
  image  jpg jpeg png webp         encoded bytes (decoded by the Preprocessor)
  text   txt | json                utf-8 text | {"caption": str or [str, ...]} or a list of str
  label  cls | json "label"        an integer class id as text
  regions  json "regions"          [{"box": [y0, x0, y1, x1], "caption": str}, ...] (data.regions)
  video  npy | mp4                 uint8 [T, H, W, C] .npy bytes | mp4 (PyAV, `.[media]` extra)
  audio  wav | flac | npy          PCM WAV | FLAC (soundfile, `.[media]`) | waveform / log-mel

Shard assignment (`data.shard_assign`, training split):
  examples  every process indexes every shard and reads its rows of each global batch: the
            example stream is the same as a JSONL manifest's with the same examples in the same
            order, for any process count.
  shards    process p of P indexes and reads only shards p, p + P, ...: no process touches
            another's files (web-scale sets whose index would not fit one host), each
            shuffles its own examples; the global batch depends on the process count.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmjax.data.decode import one_line

DEFAULT_EXTS = {"image": "jpg,jpeg,png,webp", "text": "txt,json", "label": "cls",
                "video": "npy,mp4", "audio": "wav,flac"}
SHARD_ASSIGN = ("examples", "shards")
_BRACE = re.compile(r"\{([^{}]*)\}")


# ----------------------------------------------------------------------------- shard lists

def expand_braces(pattern: str) -> List[str]:
  """'d/s-{000..002}.tar' -> ['d/s-000.tar', 'd/s-001.tar', 'd/s-002.tar']; '{a,b}' lists
  alternatives; several groups expand left to right (zero padding follows the first bound)."""
  m = _BRACE.search(pattern)
  if not m:
    return [pattern]
  body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
  rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if rng:
    lo, hi = rng.group(1), rng.group(2)
    if int(hi) < int(lo):
      raise ValueError(f"shard range {{{body}}} in {pattern!r} runs backwards; write "
                       f"{{{hi}..{lo}}}")
    width = len(lo) if lo.startswith("0") else 0
    items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    items = body.split(",")
  return [p for item in items for p in expand_braces(head + item + tail)]


def shard_paths(spec, what: str = "data.wds_shards") -> List[str]:
  """A brace pattern, a comma-free path, a list of them, or a folder (its *.tar / *.array_record
  files, sorted) -> existing shard paths; a missing one is a one-line FileNotFoundError."""
  if isinstance(spec, (list, tuple)):
    specs = [str(s) for s in spec]
  else:
    specs = [str(spec)] if str(spec) else []
  if not specs:
    raise ValueError(f"{what} is empty; give a brace pattern such as "
                     "'dir/shard-{000000..000099}.tar', a list of files, or a folder")
  out = []
  for s in specs:
    s = os.path.expanduser(s)
    if os.path.isdir(s):
      found = sorted(os.path.join(s, n) for n in os.listdir(s)
                     if n.endswith((".tar", ".array_record")))
      if not found:
        raise FileNotFoundError(f"{what}: folder {s} holds no .tar or .array_record shards; "
                                "write some with python -m mmjax.data.write")
      out.extend(found)
      continue
    out.extend(expand_braces(s))
  missing = [p for p in out if not os.path.isfile(p)]
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise FileNotFoundError(f"shard not found: {missing[0]}{more}; fix {what}")
  return out


def assign(paths: Sequence[str], process_index: int, process_count: int,
           what: str = "data.wds_shards") -> List[str]:
  """Shards p, p + P, ... of process p (data.shard_assign='shards')."""
  if len(paths) < process_count:
    raise ValueError(f"{what} has {len(paths)} shard(s), fewer than the {process_count} "
                     "processes of data.shard_assign='shards'; write more, smaller shards "
                     "(--shard_size) or use data.shard_assign='examples'")
  return list(paths[process_index::process_count])


def parse_exts(member_exts) -> Dict[str, Tuple[str, ...]]:
  """data.member_exts (output -> 'ext,ext' or a list; missing outputs use DEFAULT_EXTS)."""
  out = {k: tuple(v.split(",")) for k, v in DEFAULT_EXTS.items()}
  for k, v in dict(member_exts or {}).items():
    if k not in DEFAULT_EXTS:
      raise ValueError(f"data.member_exts has unknown output {k!r}; use "
                       f"{', '.join(DEFAULT_EXTS)}")
    exts = tuple(e.strip().lower().lstrip(".") for e in
                 (v.split(",") if isinstance(v, str) else v) if e.strip())
    out[k] = exts
  return out


# ----------------------------------------------------------------------------- tar index

def split_member(name: str) -> Optional[Tuple[str, str]]:
  """'dir/000123.seg.jpg' -> ('dir/000123', 'seg.jpg'); None for names without an extension
  or hidden metadata ('__meta__', '.DS_Store')."""
  folder, base = os.path.split(name)
  if base.startswith(("__", ".")) or "." not in base:
    return None
  stem, ext = base.split(".", 1)
  return (f"{folder}/{stem}" if folder else stem), ext.lower()


class TarIndex:
  """The examples of one tar shard: keys [N] and, per extension, data offsets / sizes [N]
  (size -1: the example lacks that member). Built from the headers alone."""

  def __init__(self, path: str, strict: bool = True):
    self.path, self.keys, self.error = path, [], None
    cols: Dict[str, Tuple[List[int], List[int]]] = {}
    total = os.path.getsize(path)
    try:
      with tarfile.open(path, mode="r:") as tar:
        for info in tar:
          if not info.isfile():
            continue
          parts = split_member(info.name)
          if parts is None:
            continue
          key, ext = parts
          if info.offset_data + info.size > total:
            raise tarfile.ReadError(f"member {info.name} runs past the end of the file")
          if not self.keys or self.keys[-1] != key:
            self.keys.append(key)
          off, size = cols.setdefault(ext, ([], []))
          n = len(self.keys)
          off.extend([0] * (n - 1 - len(off)))
          size.extend([-1] * (n - 1 - len(size)))
          if len(off) == n:  # the same extension twice in one example: keep the first
            continue
          off.append(info.offset_data)
          size.append(info.size)
    except (tarfile.TarError, EOFError, OSError) as e:
      msg = one_line(f"shard {path} is not a readable tar ({type(e).__name__}: {e})")
      if strict or not self.keys:
        raise ValueError(f"{msg}; rewrite it (python -m mmjax.data.write) or drop it from "
                         "the shard list") from None
      self.error = msg  # on_error='skip': keep the examples before the damage
      if cols:
        self.keys = self.keys[:-1]  # the last example may be missing members
    n = len(self.keys)
    self.offsets = {e: np.asarray((o + [0] * n)[:n], np.int64) for e, (o, _) in cols.items()}
    self.sizes = {e: np.asarray((s + [-1] * n)[:n], np.int64) for e, (_, s) in cols.items()}

  def __len__(self) -> int:
    return len(self.keys)


# ----------------------------------------------------------------------------- members -> raw

def _text_member(data: bytes, where: str) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(one_line(f"text member {where} is not UTF-8 ({e}); rewrite it")) from None


def _json_member(data: bytes, where: str):
  try:
    return json.loads(_text_member(data, where))
  except json.JSONDecodeError as e:
    raise ValueError(one_line(f"json member {where} is not valid JSON ({e}); rewrite "
                               "it")) from None


def _npy(data: bytes, where: str) -> np.ndarray:
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(one_line(f"cannot read .npy member {where} ({type(e).__name__}: {e}); "
                               "rewrite it")) from None


def _need(module: str, what: str):
  try:
    return __import__(module)
  except ImportError:
    raise ValueError(f"{what} members need the {module!r} package; pip install "
                     "'mmjax[media]' (or use .npy / .wav members)") from None


def _mp4(data: bytes, where: str) -> np.ndarray:
  av = _need("av", "mp4")
  try:
    with av.open(io.BytesIO(data)) as f:
      frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(one_line(f"cannot decode mp4 member {where} ({type(e).__name__}: "
                               f"{e}); re-encode it")) from None
  if not frames:
    raise ValueError(f"mp4 member {where} has no video frames; re-encode it")
  return np.stack(frames)


def _audio(ext: str, data: bytes, where: str):
  """(waveform or spectrogram, sample rate or None)."""
  if ext == "npy":
    return _npy(data, where), None
  if ext == "wav":
    from mmjax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
    try:
      return audio_lib.read_wav(io.BytesIO(data))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(one_line(f"cannot read WAV member {where} ({type(e).__name__}: {e}); "
                                 "use 8/16/32-bit PCM WAV")) from None
  sf = _need("soundfile", ext)
  try:
    x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(one_line(f"cannot read {ext} member {where} ({type(e).__name__}: {e}); "
                               "re-encode it")) from None
  return x.mean(axis=1), rate


def _captions(obj, where: str):
  """A json member's caption(s): a str, a list of str, or a dict's caption/captions/text."""
  if isinstance(obj, dict):
    for k in ("caption", "captions", "text", "txt"):
      if k in obj:
        return _captions(obj[k], where)
    return None
  if isinstance(obj, str):
    return obj
  if isinstance(obj, list) and obj and all(isinstance(c, str) for c in obj):
    return obj if len(obj) > 1 else obj[0]
  raise ValueError(f"json member {where} holds no caption (a string, a list of strings, or "
                   "an object with 'caption' / 'captions'); rewrite it")


def members_to_raw(members: Dict[str, bytes], exts: Dict[str, Tuple[str, ...]], want,
                   where: str) -> Dict[str, Any]:
  """{ext: bytes} of one example -> raw example (see mmjax.data.decode) with the outputs in
  `want`; a missing member is a one-line ValueError."""
  raw: Dict[str, Any] = {"_where": where}
  parsed_json = None
  for out in want:
    ext = next((e for e in exts[out] if e in members), None)
    if ext is None and out == "label" and "json" in members:
      parsed_json = parsed_json if parsed_json is not None else _json_member(members["json"],
                                                                              where)
      if isinstance(parsed_json, dict) and "label" in parsed_json:
        raw["label"] = parsed_json["label"]
        continue
    if ext is None:
      raise ValueError(f"example {where} has no {out} member ({'/'.join(exts[out])}); "
                       f"found {', '.join(sorted(members)) or 'none'}: rewrite the shard or "
                       "remove the example")
    data = members[ext]
    if out == "image":
      raw["image"] = data
    elif out == "text":
      if ext == "json":
        parsed_json = _json_member(data, where)
        text = _captions(parsed_json, where)
        if text is None:
          raise ValueError(f"json member {where} has no 'caption' / 'captions' key; rewrite it")
        raw["text"] = text
      else:
        raw["text"] = _text_member(data, where)
    elif out == "label":
      text = _text_member(data, where).strip()
      try:
        raw["label"] = int(text)
      except ValueError:
        raise ValueError(f"bad label {text[:40]!r} {where}: not an integer class id; write "
                         "an int such as 3") from None
    elif out == "video":
      raw["video"] = _npy(data, where) if ext == "npy" else _mp4(data, where)
    elif out == "audio":
      wave_or_spec, rate = _audio(ext, data, where)
      raw["audio"] = wave_or_spec
      if rate:
        raw["audio_rate"] = rate
  if "json" in members:  # regions (data.regions) ride in the json member: {"regions": [...]}
    parsed_json = parsed_json if parsed_json is not None else _json_member(members["json"],
                                                                            where)
    if isinstance(parsed_json, dict) and "regions" in parsed_json:
      raw["regions"] = parsed_json["regions"]
  return raw


# ----------------------------------------------------------------------------- sources

def _outputs(present, exts, first_members) -> Tuple[str, ...]:
  """The outputs the shards carry: those with a member extension present; 'label' also when
  there is no cls member but the first example's json member has a "label"."""
  want = tuple(out for out, e in exts.items() if present & set(e))
  if "label" not in want and "json" in present:
    try:
      obj = json.loads(first_members().get("json", b"null"))
    except Exception:  # pylint: disable=broad-except
      obj = None
    if isinstance(obj, dict) and "label" in obj:
      want += ("label",)
  return want


class _Shards:
  """Shared by the sources: the cumulative example counts of the shards and the outputs."""

  def _locate(self, index: int) -> Tuple[int, int]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"example {index} out of range [0, {len(self)})")
    s = int(np.searchsorted(self.starts, index, side="right")) - 1
    return s, index - int(self.starts[s])

  def __len__(self) -> int:
    return int(self.starts[-1]) if len(self.starts) else 0


class WdsSource(_Shards):
  """len(src), src[i] -> raw example i of the tar shards (in shard order, then tar order)."""

  def __init__(self, paths: Sequence[str], member_exts=None, on_error: str = "stop",
               name: str = "wds"):
    self.paths, self.name = list(paths), name
    self.exts = parse_exts(member_exts)
    self.indexes = [TarIndex(p, strict=on_error != "skip") for p in self.paths]
    self.errors = [ix.error for ix in self.indexes if ix.error]
    self.starts = np.cumsum([0] + [len(ix) for ix in self.indexes])
    if len(self) == 0:
      raise ValueError(f"the shards of {name} ({self.paths[0]}, ...) hold no examples "
                       "(members named KEY.EXT); write them with python -m mmjax.data.write")
    self._local = threading.local()
    present = set().union(*(ix.offsets for ix in self.indexes))
    self.want = _outputs(present, self.exts, lambda: self.members(0))
    if not self.want:
      raise ValueError(f"the shards of {name} have members {sorted(present)} but none this "
                       f"reader knows ({dict((k, '/'.join(v)) for k, v in self.exts.items())}); "
                       "set data.member_exts")

  def _fd(self, s: int) -> int:
    fds = getattr(self._local, "fds", None)
    if fds is None or getattr(self._local, "pid", None) != os.getpid():
      fds = self._local.fds = {}
      self._local.pid = os.getpid()
    if s not in fds:
      fds[s] = os.open(self.paths[s], os.O_RDONLY)
    return fds[s]

  def _read(self, s: int, j: int) -> Dict[str, bytes]:
    ix, fd = self.indexes[s], self._fd(s)
    return {e: os.pread(fd, int(ix.sizes[e][j]), int(ix.offsets[e][j]))
            for e in ix.sizes if ix.sizes[e][j] >= 0}

  def where(self, index: int) -> str:
    s, j = self._locate(index)
    return f"(key {self.indexes[s].keys[j]} of shard {self.paths[s]})"

  def members(self, index: int) -> Dict[str, bytes]:
    """The raw member bytes {ext: bytes} of example `index`."""
    s, j = self._locate(index)
    return self._read(s, j)

  def key(self, index: int) -> str:
    s, j = self._locate(index)
    return self.indexes[s].keys[j]

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_local", None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return members_to_raw(self.members(index), self.exts, self.want, self.where(index))


class ArrayRecordSource(_Shards):
  """len(src), src[i] -> raw example i of ArrayRecord shards of msgpack member maps."""

  def __init__(self, paths: Sequence[str], member_exts=None, name: str = "array_record"):
    import grain  # pylint: disable=g-import-not-at-top
    self.paths, self.name = list(paths), name
    self.exts = parse_exts(member_exts)
    try:
      self._src = grain.sources.ArrayRecordDataSource(self.paths)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(one_line(f"cannot open the ArrayRecord shards {self.paths[0]}, ... "
                                 f"({type(e).__name__}: {e}); rewrite them with python -m "
                                 "mmjax.data.write --to=array_record")) from None
    self.starts = np.asarray([0, len(self._src)])
    if len(self) == 0:
      raise ValueError(f"the ArrayRecord shards {self.paths[0]}, ... hold no records")
    first = self.members(0)
    self.want = _outputs(set(first), self.exts, lambda: first)
    if not self.want:
      raise ValueError(f"ArrayRecord records have members {sorted(first)} but none this reader "
                       "knows; set data.member_exts")

  def members(self, index: int) -> Dict[str, bytes]:
    import msgpack  # pylint: disable=g-import-not-at-top
    rec = self._src[int(index)]
    try:
      obj = msgpack.unpackb(rec, raw=False)
      if not isinstance(obj, dict):
        raise ValueError("not a map")
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(one_line(f"record {index} of {self.name} is not an mmjax member map "
                                 f"({type(e).__name__}: {e}); write the shards with python "
                                 "-m mmjax.data.write --to=array_record")) from None
    return {k: v for k, v in obj.items() if k != "__key__"}

  def key(self, index: int) -> str:
    import msgpack  # pylint: disable=g-import-not-at-top
    return str(msgpack.unpackb(self._src[int(index)], raw=False).get("__key__", index))

  def where(self, index: int) -> str:
    return f"(record {index} of {self.name})"

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return members_to_raw(self.members(index), self.exts, self.want, self.where(index))
