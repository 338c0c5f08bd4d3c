"""Zero-shot prompt templates and class names (`data.prompt_templates`, `data.class_names`).

A template is a str.format string with one '{}' for the class name. `data.prompt_templates`
is a list of templates, the name of a set below, or a path to a text file (one per line);
`data.class_names` is a list of names or a path to a text file (one per line), and on the
command line also a comma-separated string. The class embedding is the normalized mean over
the templates of the normalized prompt embeddings (CLIP's prompt ensemble).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

# The 80 templates OpenAI published with CLIP for ImageNet zero-shot classification.
OPENAI_IMAGENET = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.",
    "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "the plushie {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)
SIMPLE = ("a photo of a {}.",)
TEMPLATE_SETS = {"openai_imagenet": OPENAI_IMAGENET, "simple": SIMPLE}
# Templates of external sources when data.prompt_templates is unset.
DEFAULT_TEMPLATES = "openai_imagenet"


def _read_lines(path: str, key: str) -> List[str]:
  """Non-empty stripped lines of a UTF-8 text file."""
  p = os.path.expanduser(path)
  if not os.path.isfile(p):
    raise FileNotFoundError(f"{key} file not found: {path}; give an existing text file with "
                            "one entry per line, or a list")
  with open(p, encoding="utf-8") as f:
    lines = [ln.strip() for ln in f.read().splitlines()]
  lines = [ln for ln in lines if ln]
  if not lines:
    raise ValueError(f"{key} file {path} has no entries; write one per line")
  return lines


def _looks_like_path(s: str) -> bool:
  """An existing file, or a name ending in .txt (then a missing file is an error)."""
  return s.endswith(".txt") or os.path.isfile(os.path.expanduser(s))


def _as_strings(value, key: str) -> List[str]:
  if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"{key} must be a list of strings or a string (a file path); got "
                     f"{type(value).__name__}")
  out = [v.strip() for v in value]
  if not out or not all(out):
    raise ValueError(f"{key} has an empty entry or is empty; give non-empty strings")
  return out


def parse_class_names(value, key: str = "data.class_names") -> Optional[Tuple[str, ...]]:
  """None / '' / () -> None (unset); a list of names; a text file (one name per line: an
  existing file or a '.txt' path); else a comma-separated string ('cat,dog,bird').
  Names must be distinct."""
  if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
    return None
  if isinstance(value, str):
    value = _read_lines(value, key) if _looks_like_path(value) else value.split(",")
  names = _as_strings(value, key)
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"{key} repeats {dup[:3]}; give each class one distinct name")
  return tuple(names)


def parse_templates(value, key: str = "data.prompt_templates") -> Optional[Tuple[str, ...]]:
  """None / '' -> None (unset); a set name (openai_imagenet, simple); a text file (one
  template per line); a single template string; or a list of templates. Each template has
  exactly one '{}'."""
  if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
    return None
  if isinstance(value, str):
    if value in TEMPLATE_SETS:
      return TEMPLATE_SETS[value]
    if "{}" in value and not os.path.isfile(os.path.expanduser(value)):
      value = [value]
    elif _looks_like_path(value):
      value = _read_lines(value, key)
    else:
      raise ValueError(f"{key}={value!r} is neither a template set ({', '.join(TEMPLATE_SETS)}) "
                       "nor a file nor a template with '{}'; fix it")
  templates = _as_strings(value, key)
  for t in templates:
    if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
      raise ValueError(f"{key} template {t!r} must contain exactly one '{{}}' (the class name) "
                       "and no other braces")
  return tuple(templates)


def prompts(names: Sequence[str], templates: Sequence[str]) -> List[List[str]]:
  """[C][T] prompt strings: template t filled with class name c."""
  return [[t.format(n) for t in templates] for n in names]
