"""Command-line helpers shared by train.py, eval.py and the benchmarks."""
from __future__ import annotations

import ast
import functools
import os
import re
import sys
import traceback
from typing import Any, Callable, Dict, List, Tuple

from absl import flags

CONFIG_PREFIX = "--config."
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_FS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
              PermissionError)
# One-line error classes of the library, by module (checked only once their module is loaded).
_USER_ERRORS = {"mmjax.config_lib": ("ConfigError",), "mmjax.checkpoint": ("CheckpointError",),
                "mmjax.trainer": ("TrainingError",), "mmjax.convert.common": ("ConvertError",),
                "mmjax.workdir_lock": ("WorkdirLocked",)}


def one_line(error: BaseException) -> str:
  """The error's message on one line (its type name when it has none)."""
  msg = " ".join(str(error).split())
  if isinstance(error, OSError) and error.filename and error.strerror and str(
      error.filename) not in msg:
    msg = f"{error.strerror}: {error.filename}"
  return msg or type(error).__name__


def _raised_by_library(error: BaseException) -> bool:
  """True when the innermost frame that raised `error` is mmjax's own code (or an entry point),
  i.e. a deliberate one-line error, not a failure deep inside a dependency."""
  tb = error.__traceback__
  last = None
  while tb is not None:
    last, tb = tb, tb.tb_next
  if last is None:
    return False
  path = os.path.abspath(last.tb_frame.f_code.co_filename)
  return path.startswith(_PACKAGE + os.sep) or os.path.dirname(path) == os.path.dirname(_PACKAGE)


def is_user_error(error: BaseException) -> bool:
  """An expected mistake (config, data, tokenizer, checkpoint, file system), not a bug."""
  for module, names in _USER_ERRORS.items():
    mod = sys.modules.get(module)
    if mod is not None and isinstance(error, tuple(getattr(mod, n) for n in names)):
      return True
  if isinstance(error, _FS_ERRORS):
    return True
  return isinstance(error, (ValueError, OSError, ImportError)) and _raised_by_library(error)


def report_user_errors(fn: Callable) -> Callable:
  """Wrap an entry point: an expected user error is `error: <one line>` on stderr and exit
  code 1, no traceback; anything else (a bug) raises with its traceback."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      if not is_user_error(e):
        raise
      if os.environ.get("MMJAX_TRACEBACK"):
        traceback.print_exc()
      print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
      sys.exit(1)
  return wrapped


def parse_flags(argv):
  """absl flag parsing where a bad flag or --config.KEY=VALUE is one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {one_line(e)}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    msg = " ".join(re.sub(r"\\n|[\\'\"]", " ", str(e)).split())
    if "get_config" in msg:
      sys.exit(f"error: the --config file has no get_config(); pass a config file such as "
               "configs/default.py")
    sys.exit(f"error: bad config override: {msg} (check the key against the config file)")


def config_value(holder, flag: str = "config"):
  """The ConfigDict of a config_flags flag; a file that failed to load is one ConfigError
  (ml_collections defers that failure to the first access)."""
  from mmjax import config_lib  # pylint: disable=import-outside-toplevel
  value = holder.value
  try:
    "model" in value  # pylint: disable=pointless-statement
  except OSError as e:
    why = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("[Errno")]
    path = flags.FLAGS[flag].value if flag in flags.FLAGS else "?"
    path = getattr(flags.FLAGS[flag], "config_filename", None) or path
    raise config_lib.ConfigError(
        f"cannot load --{flag}={path} ({why[-1] if why else one_line(e)}); pass an existing "
        "config file such as configs/default.py") from None
  return value


def split_overrides(argv: List[str]) -> Tuple[List[str], Dict[str, str]]:
  """argv without its `--config.KEY=VALUE` / `--config.KEY VALUE` pairs, and those pairs as
  {KEY: VALUE} strings (eval.py applies them to the checkpoint's config)."""
  rest, out, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if not arg.startswith(CONFIG_PREFIX):
      rest.append(arg)
      i += 1
      continue
    key, eq, value = arg[len(CONFIG_PREFIX):].partition("=")
    if not eq:
      if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise ValueError(f"{arg} has no value; write {arg}=VALUE")
      value, i = argv[i + 1], i + 1
    if not key or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in key.split(".")):
      raise ValueError(f"bad config key in {arg}; write --config.SECTION.KEY=VALUE")
    out[key] = value
    i += 1
  return rest, out


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def literal(text: str):
  """A Python literal's value ('0.5' -> 0.5, '(8, 8)' -> a tuple), else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def coerce(text: str, like: Any, key: str) -> Any:
  """A command-line string as the type of `like` (the key's current or default value):
  bool (true/false), int, float, str, tuple ('a,b' or '(1, 2)', items typed like its first
  item); None or another type: a Python literal, else the string. Bad text: ValueError."""
  def bad(kind):
    return ValueError(f"--config.{key}={text!r} is not {kind} (the key holds "
                      f"{type(like).__name__} {like!r}); fix the value")
  if isinstance(like, bool):
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise bad("a boolean (true or false)")
  if isinstance(like, int):
    try:
      return int(text)
    except ValueError:
      raise bad("an integer") from None
  if isinstance(like, float):
    try:
      return float(text)
    except ValueError:
      raise bad("a number") from None
  if isinstance(like, str):
    return text
  if isinstance(like, (list, tuple)):
    s = text.strip()
    if s[:1] in "([":
      v = literal(s)
      if not isinstance(v, (list, tuple)):
        raise bad("a list")
      return tuple(v)
    items = [p.strip() for p in s.split(",")] if s else []
    first = like[0] if len(like) else None
    return tuple(coerce(p, first, key) if first is not None else literal(p) for p in items)
  return literal(text)
