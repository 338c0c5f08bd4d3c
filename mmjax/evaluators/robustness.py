"""Robustness to a missing or corrupted modality: the model's metrics with one modality absent
(`<m>_valid=False` on every test example) or corrupted at each severity (corruptions.py),
as absolute values and as the drop from the clean test split.

The metrics are eval.robustness_metrics ('<evaluator>/<metric>'); their evaluators run
unchanged on a view of the context whose test split is the corrupted one (the prompts of
zero-shot, the train split of a probe and every compiled stage are shared with the clean run).
Results, per modality m, corruption c and severity s (1..3):
  robustness/clean/<metric>               the clean value
  robustness/<m>_absent/<metric>          m absent
  robustness/<m>_<c><s>/<metric>          m corrupted by c at severity s
  robustness/drop/<m>_<condition>/<metric>   clean - corrupted (positive: the model lost)
A metric whose evaluator does not apply to the model or data is left out.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from mmjax import config_lib
from mmjax.data import decode
from mmjax.data import text as text_lib
from mmjax.evaluators import base, corruptions


def _absent(modality: str):
  def fn(batch):
    return {**batch, f"{modality}_valid": np.zeros(len(batch["index"]), bool)}
  return fn


def _fields(batch, modality: str) -> List[str]:
  """The batch keys that hold `modality`'s inputs (text: its hard negatives too)."""
  return [k for k in (modality, f"neg_{modality}") if k in batch]


def _corrupt(modality: str, c: corruptions.Corruption, severity: int, seed: int, ctx_arg):
  param = c.params[severity - 1]

  def fn(batch):
    out = dict(batch)
    for k in _fields(batch, modality):
      rows = []
      for i, idx in enumerate(batch["index"]):
        rng = corruptions.rng_for(seed, f"{c.name}/{k}", severity, idx)
        x = batch[k]
        one = {f: v[i] for f, v in x.items()} if isinstance(x, dict) else np.asarray(x[i])
        grid = batch.get(f"{k}_patch_grid")
        if grid is not None:  # native-aspect patch rows: corrupt the image they cut
          img = c.apply(decode.rows_image(one, grid[i]), param, rng, ctx_arg)
          rows.append(decode.patch_rows(img, int(round(np.sqrt(one.shape[1] / img.shape[2]))),
                                        one.shape[0])[0])
          continue
        rows.append(c.apply(one, param, rng, ctx_arg))
      out[k] = ({f: np.stack([r[f] for r in rows]) for f in rows[0]}
                if isinstance(rows[0], dict) else np.stack(rows))
    return out
  return fn


def conditions(ctx) -> List[Tuple[str, str, object]]:
  """(modality, condition name, batch -> corrupted batch) for every modality of the model."""
  ev = ctx.config.eval
  out = []
  for m in ctx.model.modalities:
    mod = ctx.config.model.modality(m)
    out.append((m, f"{m}_absent", _absent(m)))
    arg = (text_lib.from_config(ctx.config.data), ctx.config.data.text_len) \
        if mod.kind == "text" else None
    for c in corruptions.for_kind(mod.kind, ev.robustness_corruptions):
      for s in ev.robustness_severities:
        out.append((m, f"{m}_{c.name}{s}", _corrupt(m, c, s, ctx.config.seed, arg)))
  return out


def _metrics(ctx) -> Dict[str, base.Evaluator]:
  """{metric: its evaluator} of eval.robustness_metrics whose evaluator applies."""
  out = {}
  for metric in ctx.config.eval.robustness_metrics:
    name = metric.split("/")[0]
    if name == Robustness.name:
      raise config_lib.ConfigError(f"eval.robustness_metrics has {metric!r}; the robustness "
                                   "evaluator cannot score itself, name another's metric")
    e = base.get(name)
    if e.applies(ctx) is None:
      out[metric] = e
  return out


def _score(ctx, metrics: Dict[str, base.Evaluator]) -> Dict[str, float]:
  res = base.run_all(ctx, list({e.name: e for e in metrics.values()}.values()),
                     keep_skipped=False)
  missing = [m for m in metrics if m not in res]
  if missing:
    raise config_lib.ConfigError(
        f"eval.robustness_metrics names {missing[0]!r}, which its evaluator does not report; "
        f"it reports {', '.join(k for k in res if k.startswith(missing[0].split('/')[0]))}")
  return {m: float(res[m]) for m in metrics}


@base.register
class Robustness(base.Evaluator):
  """eval.robustness_metrics with each modality absent and corrupted (module docstring)."""
  name = "robustness"

  def applies(self, ctx):
    if not _metrics(ctx):
      return ("none of eval.robustness_metrics "
              f"({', '.join(ctx.config.eval.robustness_metrics)}) applies to this model and data")
    return None

  def run(self, ctx):
    metrics = _metrics(ctx)
    clean = _score(ctx, metrics)
    out = {f"robustness/clean/{k}": v for k, v in clean.items()}
    for _, cond, fn in conditions(ctx):
      res = _score(ctx.with_test_batches(fn), metrics)
      out.update({f"robustness/{cond}/{k}": v for k, v in res.items()})
      out.update({f"robustness/drop/{cond}/{k}": clean[k] - v for k, v in res.items()})
    return out
