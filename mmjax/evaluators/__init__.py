"""Evaluators as registered objects: each scores a restored (or training) model on the test
split and returns {'<name>/<metric>': value}.

  zero_shot     top-1 accuracy over class-name prompts (CLIP)
  retrieval     Recall@K both ways
  itm           accuracy against hard-negative captions
  mlm, mim      masked modelling on held-out data
  linear_probe  logistic regression on frozen embeddings
  caption       CIDEr-D / BLEU of generated captions
  frame_order   frame-order head accuracy
  robustness    the metrics above with each modality absent or corrupted (corruptions.py)
  referring     LocCa's box for a region's caption: accuracy at IoU >= 0.5, mean IoU
  grounded_caption  LocCa's caption for a region's box: exact match, CIDEr-D
  dense_probe   a per-patch linear probe of the object class on frozen patch tokens
  minimal_pairs caption matching against minimally different negatives, per kind

One file per family (zero_shot.py, retrieval.py, itm.py, masked.py, linear_probe.py,
captioning.py, ordering.py, robustness.py, localization.py, dense_probe.py, minimal_pairs.py), each an `Evaluator` subclass registered by name (base.py says
what an evaluator declares). A new evaluator is a subclass with `@register` anywhere (a file
the config's `imports` names): eval.evaluators=(..., <its name>) then runs it in eval.py and,
with eval.every_steps, during training.
"""
from mmjax.evaluators.base import (EvalContext, Evaluator, Results, get, names, register,
                                   resolve, run_all)
from mmjax.evaluators import (zero_shot, retrieval, itm, masked, linear_probe,  # noqa: F401
                              captioning, ordering, robustness, localization,
                              dense_probe, minimal_pairs)  # (register)

BUILTIN = names()  # the evaluators this package ships (a snapshot of the registry at import)

__all__ = ["BUILTIN", "EvalContext", "Evaluator", "Results", "get", "names", "register",
           "resolve", "run_all"]
