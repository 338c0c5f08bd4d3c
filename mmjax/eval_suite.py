"""Several evaluation sets in one call: a suite file scored on one restored checkpoint.

  python eval.py --workdir=RUN --suite=my_suite.py[:ARG]

A suite file is a Python file whose get_config(ARG) (or get_config()) returns a ConfigDict
(or dict) with one key, `sets`: a list of entries, each a dict read top to bottom:

  name         the set's row in the table and its key in results.json (unique, not 'mean')
  eval_config  optional: a standard set, 'FILE[:KIND=PATH]' as eval.py --eval_config takes it
  data         the set's data keys (source, jsonl_path, folder_path, wds_shards, class_names,
               prompt_templates, tfds_name, tfds_data_dir, tfds_split_eval, max_captions...)
  eval         optional: its eval keys (batch_size, num_examples, ...)
  evaluators   optional: its evaluators (eval.evaluators; default: the eval_config's, else
               the checkpoint's eval.evaluators)
An entry needs `data` or `eval_config`. A set's overrides, later ones winning: the
eval_config's data / eval keys, `data`, `eval`, `evaluators`, then eval.py's
--config.data.* / --config.eval.* (every set). The checkpoint is restored once (its params
put on the devices once, every set's config resolved before); each set then gets its own
config and EvalContext. Sets change only data and eval keys: a set that would build another
model (a tokenizer change) is a one-line error.
Results: {'step', 'fusion', 'devices', 'sets': {name: {'<evaluator>/<metric>': value}},
'mean': {metric: mean over the sets that have it}} (the mean is over the float metrics).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from mmjax import cli, config_lib

ENTRY_KEYS = ("name", "eval_config", "data", "eval", "evaluators")
SUITE_KEYS = ("sets",)
MEAN = "mean"  # the table's last row
EXAMPLE = "see docs/evaluation.md (Several sets in one call)"


@dataclasses.dataclass(frozen=True)
class SuiteSet:
  """One entry of a suite: its name and the flat overrides {'data.source': ..., ...}."""
  name: str
  overrides: Dict[str, Any]


def _fail(msg: str):
  raise config_lib.ConfigError(msg)


def _hint(key: str, known: Sequence[str]) -> str:
  close = difflib.get_close_matches(key, known, n=1)
  return f" (did you mean {close[0]}?)" if close else ""


def load(spec: str) -> List[SuiteSet]:
  """--suite=FILE[:ARG] -> its sets (get_config(ARG) of FILE, checked by `parse`)."""
  path, _, arg = spec.partition(":")
  file = os.path.expanduser(path)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"suite file {path} not found; pass a Python file whose "
                            f"get_config() returns sets=[dict(name=..., data=...)], {EXAMPLE}")
  mod_spec = importlib.util.spec_from_file_location("mmjax_eval_suite", file)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    _fail(f"suite file {path} has no get_config(); {EXAMPLE}")
  return parse(module.get_config(arg) if arg else module.get_config(), path)


def parse(suite, where: str = "the suite") -> List[SuiteSet]:
  """A suite config ({'sets': [entry, ...]}) -> its sets (one-line ConfigError if malformed)."""
  if not hasattr(suite, "keys"):
    _fail(f"{where}: get_config() returned {type(suite).__name__}, not a ConfigDict with "
          f"sets=[...]; {EXAMPLE}")
  for key in suite.keys():
    if key not in SUITE_KEYS:
      _fail(f"{where}: unknown suite key {key!r}{_hint(key, SUITE_KEYS)}; a suite holds "
            "only sets=[dict(name=..., data=...), ...]")
  entries = suite["sets"] if "sets" in suite else None
  if not isinstance(entries, (list, tuple)) or not entries:
    _fail(f"{where} has no sets; give it sets=[dict(name=..., data=...), ...], {EXAMPLE}")
  sets, seen = [], set()
  for i, entry in enumerate(entries):
    s = _entry(entry, i, where)
    if s.name in seen:
      _fail(f"{where}: two sets are named {s.name!r}; give each set its own name")
    seen.add(s.name)
    sets.append(s)
  return sets


def _entry(entry, i: int, where: str) -> SuiteSet:
  """Entry i of a suite as a SuiteSet (its keys checked, its overrides flattened)."""
  if not hasattr(entry, "keys"):
    _fail(f"{where}: set {i} is {type(entry).__name__}, not a dict(name=..., data=...)")
  name = entry["name"] if "name" in entry else None
  label = f"set {name!r}" if isinstance(name, str) and name else f"set {i}"
  if not isinstance(name, str) or not name.strip():
    _fail(f"{where}: {label} has no name; give it name='...' (its row in the table)")
  if name == MEAN:
    _fail(f"{where}: a set may not be named {MEAN!r} (the table's mean row); rename it")
  for key in entry.keys():
    if key in ("model", "mesh", "optimizer", "objectives", "loss_weights"):
      _fail(f"{where}: {label} sets {key} keys; the checkpoint is restored once for all sets, "
            f"so a set sets only data and eval keys (set {key} keys for every set with "
            f"--config.{key}.KEY=VALUE)")
    if key not in ENTRY_KEYS:
      _fail(f"{where}: {label} has unknown key {key!r}{_hint(key, ENTRY_KEYS)}; a set's keys "
            f"are {', '.join(ENTRY_KEYS)}")
  if "data" not in entry and "eval_config" not in entry:
    _fail(f"{where}: {label} has no data; give it data=dict(source=..., ...) or "
          "eval_config='configs/<set>.py:KIND=PATH'")
  over: Dict[str, Any] = {}
  if "eval_config" in entry:
    from mmjax.data import standard  # pylint: disable=import-outside-toplevel
    try:
      over.update(standard.eval_overrides(str(entry["eval_config"])))
    except (ValueError, OSError) as e:
      _fail(f"{label}: {cli.one_line(e)}")
  for section in ("data", "eval"):
    keys = entry[section] if section in entry else {}
    if not hasattr(keys, "items"):
      _fail(f"{where}: {label}'s {section} is {type(keys).__name__}; give a dict of "
            f"{section} keys, e.g. {section}=dict(...)")
    for k, v in keys.items():
      over[f"{section}.{k}"] = v.to_dict() if hasattr(v, "to_dict") else v
  if "evaluators" in entry:
    ev = entry["evaluators"]
    over["eval.evaluators"] = (ev,) if isinstance(ev, str) else tuple(ev)
  return SuiteSet(name, over)


def run(workdir: Optional[str] = None, checkpoint: Optional[str] = None,
        sets: Sequence[SuiteSet] = (), overrides: Optional[Mapping[str, Any]] = None,
        devices=None) -> Dict[str, Any]:
  """Each set's evaluator results on the checkpoint restored once, and their mean.
  `overrides` (eval.py's --config.KEY=VALUE) apply to the restore; their data.* / eval.*
  keys also to every set, after the set's own keys."""
  from mmjax import evaluators as evaluators_lib  # pylint: disable=import-outside-toplevel
  from mmjax import restore  # pylint: disable=import-outside-toplevel
  overrides = dict(overrides or {})
  every = {k: v for k, v in overrides.items() if k.startswith(("data.", "eval."))}
  configs, model, params, mesh, step = restore.restore_sets(
      workdir, checkpoint, overrides, [{**s.overrides, **every} for s in sets], devices,
      names=[s.name for s in sets])
  selected = [_named(s.name, evaluators_lib.resolve, tuple(c.eval.evaluators))
              for s, c in zip(sets, configs)]
  per: Dict[str, Dict[str, Any]] = {}
  for s, config, chosen in zip(sets, configs, selected):
    ctx = evaluators_lib.EvalContext(config, model, params, mesh, step)
    per[s.name] = _named(s.name, evaluators_lib.run_all, ctx, chosen)
  return {"step": step, "fusion": configs[0].model.fusion.name, "devices": mesh.size,
          "sets": per, "mean": mean(per)}


def _named(name: str, fn, *args):
  """fn(*args); a user error (bad data, an unknown evaluator) names the set."""
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    if not cli.is_user_error(e):
      raise
    raise config_lib.ConfigError(f"set {name!r}: {cli.one_line(e)}") from None


def metrics(results: Mapping[str, Any]) -> Dict[str, float]:
  """The float metrics of one set's results (not counts, notes or samples)."""
  return {k: v for k, v in results.items() if isinstance(v, float)}


def mean(per_set: Mapping[str, Mapping[str, Any]]) -> Dict[str, float]:
  """Each float metric's mean over the sets that have it (columns in first-seen order)."""
  values: Dict[str, List[float]] = {}
  for res in per_set.values():
    for k, v in metrics(res).items():
      values.setdefault(k, []).append(v)
  return {k: sum(v) / len(v) for k, v in values.items()}


def format_table(results: Mapping[str, Any]) -> str:
  """A row per set and a final mean row, a column per float metric (blank where a set has
  none, 4 decimals), then one line per skipped evaluator."""
  sets, avg = results["sets"], results["mean"]
  cols = list(avg)
  rows = [[name] + [_cell(metrics(res).get(c)) for c in cols] for name, res in sets.items()]
  rows.append([MEAN] + [_cell(avg[c]) for c in cols])
  header = ["set"] + cols
  widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]
  fmt = lambda r: "  ".join(x.ljust(w) if j == 0 else x.rjust(w)  # noqa: E731
                            for j, (x, w) in enumerate(zip(r, widths))).rstrip()
  lines = [f"step {results['step']}  fusion {results['fusion']}  devices "
           f"{results['devices']}", fmt(header)] + [fmt(r) for r in rows]
  for name, res in sets.items():
    lines += [f"{name}: {k} {v}" for k, v in res.items() if k.endswith("/skipped")]
  return "\n".join(lines)


def _cell(v: Optional[float]) -> str:
  return "" if v is None else f"{v:.4f}"
