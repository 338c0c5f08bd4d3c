"""Corruptions of one modality's evaluation inputs, for the robustness evaluator.

A corruption is registered data: the modality kinds it applies to, the parameter of each of
its three severities, and a pure function that corrupts one example. Inputs are what the
data pipeline hands the model (images normalized, text as token ids), so a corruption is the
same whatever the source. Randomness comes from a generator seeded by (seed, corruption,
severity, example index): every mesh and batch size corrupts an example the same way.

  noise      image, video, audio, features, regions  x + N(0, s^2) (s in units of the
                                                     normalized input, about one pixel std)
  blur       image                                   Gaussian blur, sigma = s x image side
  occlusion  image                                   a square of fraction s of the area set to
                                                     0 (the mean pixel), at a random place
  drop       text                                    each word dropped with probability s
  shuffle    text                                    a fraction s of the words permuted
  misspell   text                                    each word misspelt (one character swapped,
                                                     dropped, doubled or replaced) with prob. s
  frames     video, audio, features, regions         each frame / time step / token dropped
                                                     with probability s (video: the previous
                                                     frame repeats; others: zeroed / masked)

A new corruption is a `Corruption` subclass (name, kinds, params, apply) with `@register`.
"""
from __future__ import annotations

import zlib
from typing import Any, ClassVar, Sequence, Tuple

import numpy as np

from mmjax.config_lib import SEVERITY_LEVELS as LEVELS
from mmjax.config_lib import ConfigError
from mmjax.registry import Registry

# severities 1..LEVELS (config_lib.SEVERITY_LEVELS); a corruption gives one parameter each


class Corruption:
  """A registered corruption: `name`, the modality `kinds` it applies to, `params[s - 1]` of
  severity s, and `apply(x, param, rng, arg)` -> one corrupted example (arg: the text
  corruptions' (tokenizer, text_len))."""
  name: ClassVar[str] = ""
  kinds: ClassVar[Tuple[str, ...]] = ()
  params: ClassVar[Tuple[float, ...]] = ()

  def apply(self, x, param: float, rng: np.random.Generator, arg: Any = None):
    raise NotImplementedError


_CORRUPTIONS = Registry("corruption", "eval.robustness_corruptions", Corruption, ConfigError)
names = _CORRUPTIONS.names


def register(cls):
  """Class decorator: make `cls` selectable in eval.robustness_corruptions."""
  if len(cls.params) != LEVELS:
    raise ValueError(f"corruption {cls.name!r} gives {len(cls.params)} severities; give "
                     f"{LEVELS}")
  return _CORRUPTIONS.register(cls)


def get(name: str) -> Corruption:
  """An instance of the corruption registered as `name` (one-line ConfigError if none)."""
  return _CORRUPTIONS.get(name)()


def for_kind(kind: str, selected: Sequence[str] = ()) -> Tuple[Corruption, ...]:
  """The corruptions of `selected` (all registered when empty) that apply to `kind`."""
  chosen = [get(n) for n in selected] if selected else [c() for c in _CORRUPTIONS]
  return tuple(c for c in chosen if kind in c.kinds)


def rng_for(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(name.encode()), severity, int(index)])


# ---------------------------------------------------------------------------- arrays

def _noise(x, s, rng, ctx):
  if isinstance(x, dict):  # regions: the features
    return {**x, "features": _noise(x["features"], s, rng, ctx)}
  return (x + s * rng.standard_normal(x.shape)).astype(x.dtype)


def _gauss_kernel(sigma: float) -> np.ndarray:
  r = max(1, int(np.ceil(3 * sigma)))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  return k / k.sum()


def _blur_axis(x: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
  r = len(k) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
  win = np.lib.stride_tricks.sliding_window_view(xp, len(k), axis=axis)
  return win @ k


def _blur(x, s, rng, ctx):  # [H, W, C]
  del rng, ctx
  sigma = s * x.shape[0]
  k = _gauss_kernel(sigma)
  return _blur_axis(_blur_axis(x, k, 0), k, 1).astype(x.dtype)


def _occlusion(x, s, rng, ctx):  # [H, W, C]
  del ctx
  h, w = x.shape[:2]
  side = int(round(np.sqrt(s * h * w)))
  top, left = rng.integers(0, h - min(side, h) + 1), rng.integers(0, w - min(side, w) + 1)
  out = x.copy()
  out[top:top + side, left:left + side] = 0
  return out


def _frames(x, s, rng, ctx):  # video [T, H, W, C]; audio / features [T, ...]; regions dict
  del ctx
  if isinstance(x, dict):
    keep = rng.random(x["mask"].shape[0]) >= s
    return {**x, "mask": x["mask"] & keep}
  drop = rng.random(x.shape[0]) < s
  out = x.copy()
  if x.ndim == 4:  # video: a dropped frame shows the last frame that arrived
    last = 0
    for t in range(x.shape[0]):
      if drop[t] and t > 0:
        out[t] = out[last]
      else:
        last = t
    return out
  out[drop] = 0
  return out


# ---------------------------------------------------------------------------- text (words)

def _drop(words, s, rng):
  keep = [w for w in words if rng.random() >= s]
  return keep or words[:1]


def _shuffle(words, s, rng):
  n = len(words)
  k = int(round(s * n))
  if k < 2:
    return words
  pos = np.sort(rng.choice(n, k, replace=False))
  out = list(words)
  for p, q in zip(pos, rng.permutation(pos)):
    out[p] = words[q]
  return out


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _misspell_word(w: str, rng) -> str:
  if len(w) < 2:
    return w + _LETTERS[rng.integers(26)]
  i = int(rng.integers(len(w) - 1))
  op = int(rng.integers(4))
  if op == 0:  # swap two neighbours
    return w[:i] + w[i + 1] + w[i] + w[i + 2:]
  if op == 1:  # drop one
    return w[:i] + w[i + 1:]
  if op == 2:  # double one
    return w[:i + 1] + w[i] + w[i + 1:]
  return w[:i] + _LETTERS[rng.integers(26)] + w[i + 1:]  # replace one


def _misspell(words, s, rng):
  return [_misspell_word(w, rng) if rng.random() < s else w for w in words]


def _text(word_fn):
  """A word-level corruption as a token-id corruption: decode, corrupt the words, re-encode
  with the checkpoint's own tokenizer and framing (ctx: (tokenizer, text_len))."""
  def fn(ids, s, rng, ctx):
    tok, length = ctx
    rows = ids.reshape(-1, ids.shape[-1])
    out = np.stack([tok.encode(" ".join(word_fn(tok.decode(r).split(), s, rng)), length)
                    for r in rows])
    return out.reshape(ids.shape[:-1] + (length,)).astype(ids.dtype)
  return fn


def _corruption(name: str, kinds: Tuple[str, ...], params: Tuple[float, ...], fn):
  """Register the corruption of a pure function fn(x, param, rng, arg)."""
  cls = type(name.title(), (Corruption,), {
      "name": name, "kinds": kinds, "params": params,
      "apply": lambda self, x, param, rng, arg=None: fn(x, param, rng, arg),
      "__doc__": f"The {name} corruption (module docstring)."})
  return register(cls)


_corruption("noise", ("image", "video", "audio", "features", "regions"), (0.25, 0.5, 1.0), _noise)
_corruption("blur", ("image",), (0.02, 0.05, 0.1), _blur)
_corruption("occlusion", ("image",), (0.1, 0.25, 0.5), _occlusion)
_corruption("drop", ("text",), (0.1, 0.3, 0.5), _text(_drop))
_corruption("shuffle", ("text",), (0.25, 0.5, 1.0), _text(_shuffle))
_corruption("misspell", ("text",), (0.1, 0.3, 0.5), _text(_misspell))
_corruption("frames", ("video", "audio", "features", "regions"), (0.1, 0.3, 0.5), _frames)
