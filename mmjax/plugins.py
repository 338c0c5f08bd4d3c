"""User code a config names in its top-level `imports` key, imported before the config is
checked, so that what it registers (a fusion design, an objective, an evaluator) exists for
train.py and eval.py alike (the key is saved with the config beside every checkpoint).

  config.imports = ("my_project.objectives", "path/to/my_evaluator.py")

A dotted name is imported as a module; a path ending in .py is loaded once per resolved path
(as module `mmjax_plugin_<stem>`), relative paths from the current directory.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zlib
from typing import Iterable, Tuple


class PluginError(ValueError):
  """A module named in config.imports could not be imported (the message is one line)."""


def entries(config) -> Tuple[str, ...]:
  """config.imports (a ConfigDict or a parsed Config) as a tuple of strings."""
  value = config.get("imports", ()) if hasattr(config, "get") else getattr(config, "imports", ())
  if isinstance(value, str):
    value = tuple(v.strip() for v in value.split(",") if v.strip())
  value = tuple(value or ())
  if not all(isinstance(v, str) for v in value):
    raise PluginError(f"imports={value!r} must be module names or .py paths, e.g. "
                      "('my_project.objectives',)")
  return value


def _module_name(path: str) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  return f"mmjax_plugin_{stem}_{zlib.crc32(path.encode()):08x}"


def import_one(entry: str):
  """The module of one `imports` entry (imported at most once)."""
  if entry.endswith(".py"):
    path = os.path.realpath(entry)
    if not os.path.isfile(path):
      raise PluginError(f"imports entry {entry!r} is not a file; give an existing .py path or "
                        "a module name")
    name = _module_name(path)
    if name in sys.modules:
      return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise
    return module
  try:
    return importlib.import_module(entry)
  except ModuleNotFoundError as e:
    if e.name and entry.startswith(e.name):
      raise PluginError(f"imports entry {entry!r}: no module named {e.name!r}; put its folder "
                        "on PYTHONPATH or give a .py path") from None
    raise


def load(config) -> Tuple[str, ...]:
  """Imports every entry of config.imports; returns the entries."""
  names = entries(config)
  for entry in names:
    import_one(entry)
  return names


def load_all(items: Iterable[str]) -> None:
  for entry in items:
    import_one(entry)
