"""What every evaluator shares: the `Evaluator` protocol, the registry, and the context an
evaluation point hands each evaluator.

An evaluator (an `Evaluator` subclass, registered by name with `@register`) declares
  name            its key in eval.evaluators and the prefix of its results ('<name>/<metric>')
  applies(ctx)    None when it applies to this model and data, else the one-line reason it is
                  skipped (eval.py prints it as '<name>/skipped'; training leaves it out)
  run(ctx)        its results: {'<name>/<metric>': value}, numbers (and a few strings or
                  lists, e.g. the method used or caption samples)
`ctx` is an `EvalContext`: the config, model, params, mesh, the jitted model stages of
`Evaluated` (encode, embeddings, itm_scores, put), the step, and the evaluation data
(`ctx.test_batches()`, `ctx.batches(split, num_examples)`, read once and kept). The same
context serves every evaluation point of a training run (`ctx.update(params, step)`), so what
an evaluator caches with `ctx.cached` (jitted functions, prompts) is built once.
eval.py, evaluate.run and training's eval.every_steps run the registered evaluators that
eval.evaluators names; no other file keeps a list of evaluator names. Adding an evaluator is
one file (listed in the config's `imports` when it lives outside mmjax).
"""
from __future__ import annotations

import copy

from typing import Any, Callable, ClassVar, Dict, Hashable, List, Optional, Sequence

from mmjax import config_lib, restore, sharding
from mmjax.evaluators.common import Evaluated
from mmjax.registry import Registry

Results = Dict[str, Any]


class EvalContext(Evaluated):
  """A model and its params on a mesh (jitted stages: mmjax.evaluators.common.Evaluated), the
  evaluation data, and caches that outlive one evaluation point."""

  def __init__(self, config, model, params, mesh, step: Optional[int] = None):
    super().__init__(config, model, params, mesh, sharding.batch_sharding(mesh))
    self.step = step
    self._cache: Dict[Hashable, Any] = {}
    self._point: Dict[Hashable, Any] = {}
    self._test_transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None

  def with_test_batches(self, transform) -> "EvalContext":
    """A view whose test batches are transform(batch) of this context's (a modality absent
    or corrupted): same params, jitted functions and data cache, its own per-point results."""
    view = copy.copy(self)
    view._point, view._test_transform = {}, transform  # pylint: disable=protected-access
    return view

  def update(self, params, step: Optional[int] = None) -> "EvalContext":
    """The next evaluation point: new params (same structure and shardings), same caches."""
    self.params, self.step = params, step
    self._point.clear()
    return self

  def cached(self, key: Hashable, make: Callable[[], Any]) -> Any:
    """make() once for the context's lifetime (data, prompts, jitted functions)."""
    if key not in self._cache:
      self._cache[key] = make()
    return self._cache[key]

  def per_point(self, key: Hashable, make: Callable[[], Any]) -> Any:
    """make() once per evaluation point (results two evaluators share, e.g. mlm and mim)."""
    if key not in self._point:
      self._point[key] = make()
    return self._point[key]

  def batches(self, split: str, num_examples: int) -> List[Dict[str, Any]]:
    """The first num_examples of `split` in eval.batch_size batches (read once)."""
    clean = self.cached(("batches", split, num_examples), lambda: restore.split_batches(
        self.config, split, self.config.eval.batch_size, num_examples, self.mesh.size))
    if split != "test" or self._test_transform is None:
      return clean
    return self.per_point(("test_transform", num_examples),
                          lambda: [self._test_transform(b) for b in clean])

  def test_batches(self) -> List[Dict[str, Any]]:
    """eval.num_examples of the test split: what the evaluators score."""
    return self.batches("test", self.config.eval.num_examples)

  @property
  def labelled(self) -> bool:
    return "label" in self.test_batches()[0]

  @property
  def text_second(self) -> bool:
    """Prompts and hard-negative captions are text: they need the second modality as text."""
    return self.config.model.modality(self.b).kind == "text"


class Evaluator:
  """One evaluation (module docstring). Subclasses set `name` and implement `run`."""
  name: ClassVar[str] = ""

  def applies(self, ctx: EvalContext) -> Optional[str]:  # pylint: disable=unused-argument
    """None when this evaluator applies to ctx's model and data, else why it is skipped."""
    return None

  def run(self, ctx: EvalContext) -> Results:
    raise NotImplementedError


_EVALUATORS = Registry("evaluator", "eval.evaluators", Evaluator, config_lib.ConfigError)
register = _EVALUATORS.register  # class decorator: eval.evaluators=(cls.name, ...)
names = _EVALUATORS.names        # every registered evaluator, in registration order


def get(name: str) -> Evaluator:
  """An instance of the evaluator registered as `name` (one-line ConfigError if none)."""
  return _EVALUATORS.get(name)()


def resolve(selected: Sequence[str]) -> List[Evaluator]:
  """The evaluators of `selected` (eval.evaluators), each checked to be registered."""
  return [get(n) for n in selected]


def run_all(ctx: EvalContext, evaluators: Sequence[Evaluator],
            keep_skipped: bool = True) -> Results:
  """Each evaluator's results in order; one that does not apply gives '<name>/skipped'
  (its reason) when keep_skipped."""
  out: Results = {}
  for e in evaluators:
    why = e.applies(ctx)
    if why is None:
      out.update(e.run(ctx))
    elif keep_skipped:
      out[f"{e.name}/skipped"] = why
  return out
