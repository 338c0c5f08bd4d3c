"""Built-in multimodal dataset, generated on the fly: random access by (seed, split, index).

Tasks (arrays are float32, normalized to about zero mean / unit variance):
  image_text   'image' [S, S, 3]: 1-3 coloured shapes, a big main object and small ones beside it.
               Caption: "a red circle right of a blue square and below a green triangle" (the
               subject is always the big object). label = colour x shape of the big object (18).
  video_text   'video' [T, S, S, 3]: one shape moving left/right/up/down.
               Caption: "a red circle moving left". label = shape x motion (12).
  audio_text   'audio' [A, F] log-mel of a synthesized tone. Caption: "a pulsing buzzy tone
               rising". label = pitch pattern (6).
  audio_video  'video' [T, S, S, 3] + 'audio' [A, F], A a multiple of T: audio frames
               [t*A/T, (t+1)*A/T) belong to video frame t. A shape flashes on some frames; tone
               bursts sound on the same frames ("in sync") or on other frames ("out of sync").
               Caption: "a red circle flashes twice with high beeps in sync".
               label = flash count x sync (6).
Every example also has 'text' int32 [L], 'neg_text' int32 [K, L] (K hard negatives, each differing
from the caption in exactly one binding: two objects' colours or shapes swapped, a relation,
motion, pitch pattern or sync flipped first; then a single attribute replaced), 'label' int32 [],
'index' int32 [] (position in the split), and with include_caption the raw 'caption' / 'neg_caption'
strings. Splits 'train' and 'test' draw from disjoint random streams.

With regions=True (image_text; data.regions) each example also has its objects as regions, R =
max_objects slots: 'region_boxes' float32 [R, 4] (y0, x0, y1, x1 of the shape's extent, in [0, 1]
of the image), 'region_text' int32 [R, L] (the object's own caption, "a red circle"),
'region_valid' bool [R], and 'pixel_labels' int32 [S, S] (0 background, 1 + colour x shape index
of the object painted at each pixel: the dense probe's targets).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from mmjax.data import audio as audio_lib
from mmjax.data import regions as regions_lib
from mmjax.data import render
from mmjax.data import text as text_lib

TASKS = ("image_text", "video_text", "audio_text", "audio_video")
SPLITS = {"train": 0, "test": 1}
COLOURS = render.COLOUR_NAMES
SHAPES = render.SHAPES
RELATIONS = ("left of", "right of", "above", "below")
MOTIONS = ("left", "right", "up", "down")
PATTERNS = ("rising", "falling", "steady high", "steady low", "low then high", "high then low")
TIMBRES = ("pure", "buzzy")
ENVELOPES = ("continuous", "pulsing")
COUNTS = ("once", "twice", "three times")
PITCHES = ("high", "low")
SYNCS = ("in sync", "out of sync")
FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
        "left": "right", "right": "left", "up": "down", "down": "up",
        "rising": "falling", "falling": "rising", "steady high": "steady low",
        "steady low": "steady high", "low then high": "high then low",
        "high then low": "low then high", "pure": "buzzy", "buzzy": "pure",
        "continuous": "pulsing", "pulsing": "continuous", "high": "low", "low": "high",
        "in sync": "out of sync", "out of sync": "in sync"}

# Dataset-level pixel statistics of the rendered scenes (measured on 2,000 examples).
PIXEL_STATS = {"image_text": (0.121, 0.178), "video_text": (0.102, 0.142),
               "audio_video": (0.084, 0.100)}
LOW_HZ, HIGH_HZ = (300.0, 450.0), (1500.0, 2200.0)
PULSE_FRAMES = 8  # 'pulsing' envelope: 8 audio frames on, 8 off

_TEMPLATES = {
    "image_text": ("a photo of a {}.", "a {}.", "a picture of a {}.", "a drawing of a {}."),
    "video_text": ("a video of a {}.", "a {}.", "a clip of a {}."),
    "audio_text": ("a tone {}.", "the sound of a tone {}.", "a recording of a tone {}."),
    "audio_video": ("a shape {}.", "a video where a shape {}.", "a clip: a shape {}."),
}


# ----------------------------------------------------------------------------- public metadata

def _check_task(task: str):
  if task not in TASKS:
    raise ValueError(f"unknown built-in task {task!r}; set data.task to one of {', '.join(TASKS)}")


def class_names(task: str) -> List[str]:
  """Zero-shot class names, in label order."""
  _check_task(task)
  if task == "image_text":
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]
  if task == "video_text":
    return [f"{s} moving {m}" for s in SHAPES for m in MOTIONS]
  if task == "audio_text":
    return list(PATTERNS)
  return [f"flashes {n} with beeps {s}" for n in COUNTS for s in SYNCS]


def prompt_templates(task: str) -> List[str]:
  """Zero-shot prompt templates with one '{}' for the class name."""
  _check_task(task)
  return list(_TEMPLATES[task])


def num_examples(task: str, split: str, data_cfg=None) -> int:
  """Split size: data_cfg.train_examples / test_examples (defaults 50_000 / 1_000)."""
  _check_task(task)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r} for the built-in set; use 'train' or 'test'")
  get = (lambda k, d: data_cfg.get(k, d)) if data_cfg is not None else (lambda k, d: d)
  return int(get("train_examples", 50_000) if split == "train" else get("test_examples", 1_000))


# ----------------------------------------------------------------------------- captions

def caption(task: str, sem: Dict[str, Any]) -> str:
  """Structured semantics -> caption string."""
  if task == "image_text":
    (c0, s0), rest = sem["objects"][0], sem["objects"][1:]
    clauses = [f"{r} a {c} {s}" for r, (c, s) in zip(sem["relations"], rest)]
    return f"a {c0} {s0}" + (" " + " and ".join(clauses) if clauses else "")
  if task == "video_text":
    return f"a {sem['colour']} {sem['shape']} moving {sem['motion']}"
  if task == "audio_text":
    return f"a {sem['envelope']} {sem['timbre']} tone {sem['pattern']}"
  return (f"a {sem['colour']} {sem['shape']} flashes {sem['count']} with {sem['pitch']} beeps "
          f"{sem['sync']}")


def _alt(names: Sequence[str]) -> str:
  return "|".join(re.escape(n) for n in names)


_OBJ = rf"a ({_alt(COLOURS)}) ({_alt(SHAPES)})"
_PARSERS = {
    "video_text": (re.compile(rf"{_OBJ} moving ({_alt(MOTIONS)})"), ("colour", "shape", "motion")),
    "audio_text": (re.compile(rf"a ({_alt(ENVELOPES)}) ({_alt(TIMBRES)}) tone ({_alt(PATTERNS)})"),
                   ("envelope", "timbre", "pattern")),
    "audio_video": (re.compile(rf"{_OBJ} flashes ({_alt(COUNTS)}) with ({_alt(PITCHES)}) beeps "
                               rf"({_alt(SYNCS)})"), ("colour", "shape", "count", "pitch", "sync")),
}


def parse_caption(task: str, text: str) -> Dict[str, Any]:
  """Caption string -> structured semantics (inverse of `caption`); ValueError if malformed."""
  _check_task(task)
  if task == "image_text":
    m = re.fullmatch(rf"{_OBJ}(?: (.+))?", text)
    if not m:
      raise ValueError(f"not an image_text caption: {text!r}")
    objects, relations = [(m[1], m[2])], []
    for clause in (m[3].split(" and ") if m[3] else []):
      mm = re.fullmatch(rf"({_alt(RELATIONS)}) {_OBJ}", clause)
      if not mm:
        raise ValueError(f"not an image_text caption: {text!r}")
      relations.append(mm[1])
      objects.append((mm[2], mm[3]))
    return {"objects": tuple(objects), "relations": tuple(relations)}
  pattern, keys = _PARSERS[task]
  m = pattern.fullmatch(text)
  if not m:
    raise ValueError(f"not a {task} caption: {text!r}")
  return dict(zip(keys, m.groups()))


# ----------------------------------------------------------------------------- hard negatives

def _replace(sem, key, values):
  return [dict(sem, **{key: v}) for v in values if v != sem[key]]


def negative_candidates(task: str, sem) -> Tuple[List[dict], List[dict]]:
  """-> (binding edits: swaps / flips, single-attribute replacements), each one binding away."""
  if task == "image_text":
    objs, rels = list(sem["objects"]), list(sem["relations"])
    primary, secondary = [], []
    for i in range(len(objs)):
      for j in range(i + 1, len(objs)):
        for a in (0, 1):  # 0: swap colours, 1: swap shapes
          if objs[i][a] != objs[j][a]:
            o = [list(x) for x in objs]
            o[i][a], o[j][a] = objs[j][a], objs[i][a]
            primary.append({"objects": tuple(map(tuple, o)), "relations": tuple(rels)})
    for j, r in enumerate(rels):
      flipped = tuple(rels[:j] + [FLIP[r]] + rels[j + 1:])
      primary.append({"objects": tuple(objs), "relations": flipped})
    used = {c for c, _ in objs}
    for i, (c, s) in enumerate(objs):
      for v in COLOURS:
        if v not in used:
          secondary.append({"objects": tuple(objs[:i] + [(v, s)] + objs[i + 1:]),
                            "relations": tuple(rels)})
      for v in SHAPES:
        if v != s:
          secondary.append({"objects": tuple(objs[:i] + [(c, v)] + objs[i + 1:]),
                            "relations": tuple(rels)})
    return primary, secondary
  if task == "video_text":
    perp = [m for m in MOTIONS if m not in (sem["motion"], FLIP[sem["motion"]])]
    return ([dict(sem, motion=FLIP[sem["motion"]])],
            _replace(sem, "colour", COLOURS) + _replace(sem, "shape", SHAPES)
            + _replace(sem, "motion", perp))
  if task == "audio_text":
    others = [p for p in PATTERNS if p not in (sem["pattern"], FLIP[sem["pattern"]])]
    return ([dict(sem, pattern=FLIP[sem["pattern"]])],
            [dict(sem, timbre=FLIP[sem["timbre"]]), dict(sem, envelope=FLIP[sem["envelope"]])]
            + _replace(sem, "pattern", others))
  return ([dict(sem, sync=FLIP[sem["sync"]])],
          [dict(sem, pitch=FLIP[sem["pitch"]])] + _replace(sem, "count", COUNTS)
          + _replace(sem, "colour", COLOURS) + _replace(sem, "shape", SHAPES))


def hard_negatives(task: str, sem, rng: np.random.Generator, k: int) -> List[str]:
  """K negative captions: binding edits first (random order), then attribute replacements."""
  if k <= 0:
    return []
  primary, secondary = negative_candidates(task, sem)
  out: List[str] = []
  for group in (primary, secondary):
    for i in rng.permutation(len(group)):
      cap = caption(task, group[i])
      if cap not in out:
        out.append(cap)
      if len(out) == k:
        return out
  return [out[i % len(out)] for i in range(k)]  # more negatives asked than exist: repeat


# ----------------------------------------------------------------------------- scenes

def _sample_image_text(rng, s: int, max_objects: int):
  n = int(rng.integers(1, max_objects + 1))
  colours = rng.choice(len(COLOURS), size=n, replace=False)
  shapes = rng.integers(0, len(SHAPES), size=n)
  dirs = rng.choice(4, size=n - 1, replace=False)  # where the small object sits: L, R, above, below
  rb, rs = 0.18 * s, 0.11 * s
  cy, cx = s / 2 + rng.uniform(-0.06 * s, 0.06 * s, size=2)
  jit = rng.uniform(-0.06 * s, 0.06 * s, size=n - 1)
  off = rb + rs + 0.06 * s
  pos, rels = [(cy, cx, rb)], []
  for d, j in zip(dirs, jit):
    dy, dx = ((j, -off), (j, off), (-off, j), (off, j))[d]
    pos.append((np.clip(cy + dy, rs, s - rs), np.clip(cx + dx, rs, s - rs), rs))
    rels.append(("right of", "left of", "below", "above")[d])  # main object relative to it
  sem = {"objects": tuple((COLOURS[c], SHAPES[h]) for c, h in zip(colours, shapes)),
         "relations": tuple(rels)}
  return sem, {"pos": pos, "bright": rng.uniform(0.85, 1.0, size=n)}


def _render_image_text(rng, sem, lay, s: int):
  canvas = render.background(rng, (s, s))
  for (c, h), (y, x, r), b in zip(sem["objects"], lay["pos"], lay["bright"]):
    render.paint_shape(canvas, h, y, x, r, c, b)
  return render.add_noise(rng, canvas)


def _sample_video_text(rng, s: int, t: int):
  sem = {"colour": COLOURS[rng.integers(len(COLOURS))], "shape": SHAPES[rng.integers(len(SHAPES))],
         "motion": MOTIONS[rng.integers(len(MOTIONS))]}
  r, dist = 0.16 * s, 0.45 * s
  lo, hi = r + 0.5, s - r - 0.5
  fixed, start = rng.uniform(lo, hi), rng.uniform(lo, hi - dist)
  path = start + dist * np.linspace(0.0, 1.0, t)
  if sem["motion"] in ("left", "up"):
    path = path[::-1]
  still = np.full(t, fixed)
  ys, xs = (still, path) if sem["motion"] in ("left", "right") else (path, still)
  canvas = render.background(rng, (t, s, s))
  render.paint(canvas, render.shape_mask(sem["shape"], ys, xs, r, s), sem["colour"],
               rng.uniform(0.85, 1.0))
  return sem, render.add_noise(rng, canvas)


def _frame_of_sample(n: int, sample_rate: int, num_frames: int) -> np.ndarray:
  """Audio frame whose window is centred nearest each sample: int [n]."""
  win, hop, _ = audio_lib.frame_params(sample_rate)
  return np.clip((np.arange(n) - win // 2 + hop // 2) // hop, 0, num_frames - 1)


def _tone(freq: np.ndarray, sample_rate: int, buzzy: bool) -> np.ndarray:
  """Instantaneous frequency [n] (Hz) -> float32 waveform [n]; buzzy adds harmonics 2..4."""
  phase = np.cumsum(freq * np.float32(2 * np.pi / sample_rate), dtype=np.float32)
  wave = np.sin(phase)
  if buzzy:
    for k in (2, 3, 4):  # only below Nyquist
      wave += np.sin(k * phase) * ((k * freq < 0.45 * sample_rate) / np.float32(k))
  return wave


def _pitch_track(pattern: str, lo: float, hi: float, n: int) -> np.ndarray:
  """Frequency (Hz) per sample, float32 [n]; sweeps are geometric."""
  u = np.arange(n, dtype=np.float32) / np.float32(n)
  ratio = np.float32(np.log(hi / lo))
  if pattern == "rising":
    return np.float32(lo) * np.exp(u * ratio)
  if pattern == "falling":
    return np.float32(hi) * np.exp(-u * ratio)
  if pattern.startswith("steady"):
    return np.full(n, hi if pattern == "steady high" else lo, np.float32)
  first, second = (lo, hi) if pattern == "low then high" else (hi, lo)
  return np.where(u < 0.5, np.float32(first), np.float32(second))


@functools.lru_cache(maxsize=4)
def _ramp(sample_rate: int) -> np.ndarray:
  w = np.hanning(int(0.004 * sample_rate) | 1).astype(np.float32)
  return w / w.sum()


def _sample_audio_text(rng, frames: int, sample_rate: int, mel_bins: int):
  sem = {"envelope": ENVELOPES[rng.integers(2)], "timbre": TIMBRES[rng.integers(2)],
         "pattern": PATTERNS[rng.integers(len(PATTERNS))]}
  n = audio_lib.num_samples(frames, sample_rate)
  lo, hi = rng.uniform(*LOW_HZ), rng.uniform(*HIGH_HZ)
  wave = _tone(_pitch_track(sem["pattern"], lo, hi, n), sample_rate, sem["timbre"] == "buzzy")
  wave *= np.float32(rng.uniform(0.3, 0.6))
  if sem["envelope"] == "pulsing":  # on/off every PULSE_FRAMES frames, with 4 ms ramps (no clicks)
    gate = ((_frame_of_sample(n, sample_rate, frames) // PULSE_FRAMES) % 2 == 0).astype(np.float32)
    ramp = _ramp(sample_rate)
    wave *= np.convolve(gate, ramp, mode="same")
  wave += np.float32(0.003) * rng.standard_normal(n, dtype=np.float32)
  return sem, audio_lib.log_mel(wave, sample_rate, mel_bins, frames)


def _nonadjacent(rng, t: int, n: int, exclude=()) -> np.ndarray | None:
  """n distinct, pairwise non-adjacent frames in [0, t) avoiding `exclude` (None if not found)."""
  for _ in range(64):
    f = np.sort(rng.choice(t, size=n, replace=False))
    if np.all(np.diff(f) > 1) and not set(f.tolist()) & set(exclude):
      return f
  return None


def max_flashes(num_frames: int) -> int:
  """Most flashes an audio_video clip of this length can hold (in and out of sync)."""
  return 3 if num_frames >= 8 else 2 if num_frames >= 5 else 1


def _sample_audio_video(rng, s: int, t: int, frames: int, sample_rate: int, mel_bins: int):
  while True:  # draw flash and beep frames; redraw in the rare case no disjoint beep set exists
    n = int(rng.integers(1, max_flashes(t) + 1))
    sync = SYNCS[rng.integers(2)]
    flash = _nonadjacent(rng, t, n)
    beeps = flash if sync == "in sync" else _nonadjacent(rng, t, n, exclude=flash.tolist())
    if beeps is not None:
      break
  sem = {"colour": COLOURS[rng.integers(len(COLOURS))], "shape": SHAPES[rng.integers(len(SHAPES))],
         "count": COUNTS[n - 1], "pitch": PITCHES[rng.integers(2)], "sync": sync}
  r = 0.2 * s
  y, x = rng.uniform(r + 0.5, s - r - 0.5, size=2)
  canvas = render.background(rng, (t, s, s))
  mask = render.shape_mask(sem["shape"], y, x, r, s)
  on = np.zeros(t, bool)
  on[flash] = True
  render.paint(canvas, mask[None] & on[:, None, None], sem["colour"], rng.uniform(0.85, 1.0))
  video = render.add_noise(rng, canvas)
  # audio: a tone during the audio frames of each beep's video frame
  num = audio_lib.num_samples(frames, sample_rate)
  hz = rng.uniform(*(HIGH_HZ if sem["pitch"] == "high" else LOW_HZ))
  _, hop, _ = audio_lib.frame_params(sample_rate)
  win = audio_lib.num_samples(1, sample_rate)
  span = (frames // t) * hop  # samples per video step
  pos = np.arange(num)
  # a burst fills the audio frames of its video step and leaks into no neighbouring frame
  gate = np.isin(pos // span, beeps) & (pos % span >= win - hop)
  wave = np.sin(np.arange(num, dtype=np.float32) * np.float32(2 * np.pi * hz / sample_rate))
  wave *= gate * np.float32(rng.uniform(0.3, 0.6))
  wave += np.float32(0.003) * rng.standard_normal(num, dtype=np.float32)
  return sem, video, audio_lib.log_mel(wave, sample_rate, mel_bins, frames)


def label_of(task: str, sem) -> int:
  """Structured semantics -> class index (see class_names)."""
  if task == "image_text":
    c, s = sem["objects"][0]
    return COLOURS.index(c) * len(SHAPES) + SHAPES.index(s)
  if task == "video_text":
    return SHAPES.index(sem["shape"]) * len(MOTIONS) + MOTIONS.index(sem["motion"])
  if task == "audio_text":
    return PATTERNS.index(sem["pattern"])
  return COUNTS.index(sem["count"]) * len(SYNCS) + SYNCS.index(sem["sync"])


REGION_CLASSES = 1 + len(COLOURS) * len(SHAPES)  # pixel_labels: background + colour x shape


def region_caption(obj: Tuple[str, str]) -> str:
  """One object's own caption: ('red', 'circle') -> 'a red circle'."""
  return f"a {obj[0]} {obj[1]}"


def shape_box(shape: str, cy: float, cx: float, r: float, s: int) -> np.ndarray:
  """The extent of render.shape_mask's shape as (y0, x0, y1, x1) in [0, 1] of an S x S image."""
  half = 0.85 * r if shape == "square" else r
  top, bottom = (cy - r, cy + 0.8 * r) if shape == "triangle" else (cy - half, cy + half)
  box = np.asarray([top, cx - half, bottom, cx + half], np.float32) / np.float32(s)
  return np.clip(box, 0.0, 1.0)


def _regions(sem, lay, s: int, slots: int, tokenizer, text_len: int) -> Dict[str, np.ndarray]:
  """The region keys of an image_text example (module docstring)."""
  boxes, caps, labels = [], [], np.zeros((s, s), np.int32)
  for (c, h), (y, x, r) in zip(sem["objects"], lay["pos"]):
    boxes.append(shape_box(h, y, x, r, s))
    caps.append(region_caption((c, h)))
    labels[render.shape_mask(h, y, x, r, s)] = 1 + label_of("image_text", {"objects": [(c, h)]})
  out = regions_lib.region_arrays(np.asarray(boxes, np.float32).reshape(-1, 4), caps, slots,
                             tokenizer, text_len)
  return dict(out, pixel_labels=labels)


def _normalize_pixels(task: str, x: np.ndarray) -> np.ndarray:
  mean, std = PIXEL_STATS[task]
  return ((x - np.float32(mean)) * np.float32(1.0 / std)).astype(np.float32)


# ----------------------------------------------------------------------------- the source

class BuiltinSource:
  """grain-compatible random-access source: len(src), src[i] -> example dict (see module doc)."""

  def __init__(self, task: str = "image_text", split: str = "train", *, size: int | None = None,
               seed: int = 0, image_size: int = 32, num_frames: int = 8, audio_frames: int = 64,
               mel_bins: int = 32, sample_rate: int = 16_000, text_len: int = 32,
               tokenizer: str = "bytes", num_hard_negatives: int = 3, max_objects: int = 3,
               include_caption: bool = False, regions: bool = False):
    _check_task(task)
    if regions and task != "image_text":
      raise ValueError(f"data.regions=True needs data.task='image_text' (objects with boxes); "
                       f"task {task} has none")
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r} for the built-in set; use 'train' or 'test'")
    if not 1 <= max_objects <= 5:
      raise ValueError(f"data.max_objects={max_objects} is out of range; use 1..5")
    if task in ("video_text", "audio_video") and num_frames < 2:
      raise ValueError(f"task {task} needs data.num_frames >= 2 (got {num_frames})")
    if task == "audio_video" and audio_frames % num_frames:
      raise ValueError(f"audio_video needs data.audio_frames ({audio_frames}) to be a multiple of "
                       f"data.num_frames ({num_frames}) so audio and video steps align; change one")
    self.task, self.split = task, split
    self.size = num_examples(task, split) if size is None else int(size)
    self.seed, self.image_size, self.num_frames = int(seed), int(image_size), int(num_frames)
    self.audio_frames, self.mel_bins = int(audio_frames), int(mel_bins)
    self.sample_rate = int(sample_rate)
    self.text_len, self.tokenizer_spec = int(text_len), tokenizer
    self.k, self.max_objects = int(num_hard_negatives), int(max_objects)
    self.include_caption, self.regions = bool(include_caption), bool(regions)
    self.tokenizer = text_lib.get_tokenizer(tokenizer)

  def __len__(self) -> int:
    return self.size

  def __getstate__(self):  # tokenizers wrap native objects: rebuild them after pickling
    return {k: v for k, v in self.__dict__.items() if k != "tokenizer"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self.tokenizer = text_lib.get_tokenizer(self.tokenizer_spec)

  def rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng((self.seed, SPLITS[self.split], TASKS.index(self.task), index))

  def __getitem__(self, index: int) -> Dict[str, Any]:
    index = int(index)
    if not 0 <= index < self.size:
      index %= self.size
    rng, s, t = self.rng(index), self.image_size, self.num_frames
    ex: Dict[str, Any] = {}
    if self.task == "image_text":
      sem, lay = _sample_image_text(rng, s, self.max_objects)
      ex["image"] = _normalize_pixels(self.task, _render_image_text(rng, sem, lay, s))
      if self.regions:
        ex.update(_regions(sem, lay, s, self.max_objects, self.tokenizer, self.text_len))
    elif self.task == "video_text":
      sem, video = _sample_video_text(rng, s, t)
      ex["video"] = _normalize_pixels(self.task, video)
    elif self.task == "audio_text":
      sem, spec = _sample_audio_text(rng, self.audio_frames, self.sample_rate, self.mel_bins)
      ex["audio"] = audio_lib.normalize_spectrogram(spec)
    else:
      sem, video, spec = _sample_audio_video(rng, s, t, self.audio_frames, self.sample_rate,
                                             self.mel_bins)
      ex["video"] = _normalize_pixels(self.task, video)
      ex["audio"] = audio_lib.normalize_spectrogram(spec)
    cap = caption(self.task, sem)
    negs = hard_negatives(self.task, sem, rng, self.k)
    ex["text"] = self.tokenizer.encode(cap, self.text_len)
    ex["neg_text"] = text_lib.encode_batch(self.tokenizer, negs, self.text_len)
    ex["label"] = np.int32(label_of(self.task, sem))
    ex["index"] = np.int32(index)
    if self.include_caption:
      ex["caption"] = np.asarray(cap)
      ex["neg_caption"] = np.asarray(negs, dtype=str).reshape(self.k)
    return ex


def source_from_config(cfg, split: str) -> BuiltinSource:
  """BuiltinSource from a data ConfigDict (mmjax.data.config keys)."""
  return BuiltinSource(
      cfg.task, split, size=num_examples(cfg.task, split, cfg), seed=cfg.builtin_seed,
      image_size=cfg.image_size, num_frames=cfg.num_frames, audio_frames=cfg.audio_frames,
      mel_bins=cfg.mel_bins, sample_rate=cfg.sample_rate, text_len=cfg.text_len,
      tokenizer=text_lib.spec_from_config(cfg), num_hard_negatives=cfg.num_hard_negatives,
      max_objects=cfg.max_objects, include_caption=cfg.include_caption,
      regions=cfg.get("regions", False))
