"""One shape for every extensible concept: a registry of named classes.

Fusion designs (`model.fusion`), objectives (`loss_weights.<name>`) and evaluators
(`eval.evaluators`) are each a `Registry`: `register` (a class decorator), `names()` in
registration order, `get(name)` with a did-you-mean. A new one is a subclass with a `name`
and `@register`, in any module the config's `imports` names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, Tuple, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Subclasses of `base` by their `name`. `what` names one in messages ('fusion design'),
  `key` is the config key that selects one ('model.fusion'); an unknown name raises
  `error` (ValueError, or the caller's ConfigError) in one line."""

  def __init__(self, what: str, key: str, base: type,
               error: Callable[[str], Exception] = ValueError):
    self.what, self.key, self.base, self.error = what, key, base, error
    self._classes: Dict[str, Type[T]] = {}

  def register(self, cls: Type[T]) -> Type[T]:
    """Class decorator: make `cls` selectable as key=cls.name. Registering the same class
    again is a no-op; another class under a taken name is an error."""
    if not (isinstance(cls, type) and issubclass(cls, self.base)) or not getattr(cls, "name", ""):
      raise ValueError(f"register takes a {self.base.__name__} subclass with a `name`; got "
                       f"{cls!r}")
    known = self._classes.get(cls.name, cls)
    if known is not cls:
      raise ValueError(f"{self.what} {cls.name!r} is registered twice ({cls.__name__} and "
                       f"{known.__name__}); pick another name")
    self._classes[cls.name] = cls
    return cls

  def names(self) -> Tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(self._classes)

  def __contains__(self, name) -> bool:
    return name in self._classes

  def __iter__(self) -> Iterator[Type[T]]:
    return iter(tuple(self._classes.values()))

  def get(self, name: str) -> Type[T]:
    """The class registered as `name`."""
    if name not in self._classes:
      close = difflib.get_close_matches(str(name), list(self._classes), n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise self.error(f"unknown {self.key}={name!r}{hint}; choose one of "
                       f"{', '.join(self._classes)} (a new {self.what} is registered by a "
                       "module the config's `imports` names)")
    return self._classes[name]
