"""Statistics over seeds that can rank: a metric's seeds -> mean, range and a bootstrap
interval; two designs are ordered only where their intervals separate.

  summarize(values)        {'n', 'mean', 'std' (sample), 'min', 'max', 'lo', 'hi'}: lo, hi the
                           percentile bootstrap interval of the mean (LEVEL, RESAMPLES
                           resamples of the seeds with replacement, seeded)
  separated(a, b)          the two intervals do not overlap
  rank_ranges(cells)       {design: (best, worst)}: best = 1 + the designs surely above it,
                           worst = N - the designs surely below it; equal ranges are ties
  seeds_needed(a, b)       the seeds per design at which intervals of +-Z std / sqrt(n)
                           around the two means would stop overlapping, from the measured
                           stds and difference: ceil((Z (s_a + s_b) / |d|)^2)
  fit_log_curve(x, y)      least squares y = a + b log10(x): the metric against compute

With few seeds the bootstrap interval is narrower than the population's would be (it cannot
see values the seeds did not draw); the docs say so beside every table.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
Z = 1.96


def summarize(values: Sequence[float], seed: int = 0) -> Dict[str, float]:
  """The seeds' summary (module docstring); NaN values are dropped."""
  v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
  if not len(v):
    return {"n": 0}
  means = v[np.random.default_rng(seed).integers(0, len(v), (RESAMPLES, len(v)))].mean(axis=1)
  tail = 100 * (1 - LEVEL) / 2
  return {"n": int(len(v)), "mean": float(v.mean()),
          "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max()),
          "lo": float(np.percentile(means, tail)), "hi": float(np.percentile(means, 100 - tail))}


def separated(a: Dict[str, float], b: Dict[str, float]) -> bool:
  """True when both have values and their intervals do not overlap."""
  return bool(a.get("n") and b.get("n") and (a["lo"] > b["hi"] or b["lo"] > a["hi"]))


def above(a: Dict[str, float], b: Dict[str, float]) -> bool:
  """a is surely above b: separated, a's mean higher."""
  return separated(a, b) and a["mean"] > b["mean"]


def rank_ranges(cells: Dict[str, Dict[str, float]]) -> Dict[str, Tuple[int, int]]:
  """{name: (best rank, worst rank)} over the cells that have values (module docstring)."""
  have = {k: c for k, c in cells.items() if c.get("n")}
  n = len(have)
  return {k: (1 + sum(above(o, c) for j, o in have.items() if j != k),
              n - sum(above(c, o) for j, o in have.items() if j != k)) for k, c in have.items()}


def seeds_needed(a: Dict[str, float], b: Dict[str, float]) -> float:
  """Seeds per design for +-Z std / sqrt(n) intervals to separate (inf: equal means)."""
  d = abs(a["mean"] - b["mean"])
  if d == 0:
    return math.inf
  return float(math.ceil((Z * (a["std"] + b["std"]) / d) ** 2))


def fit_log_curve(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
  """(a, b) of the least-squares y = a + b log10(x) (b: change per 10x of x)."""
  lx = np.log10(np.asarray(x, np.float64))
  y = np.asarray(y, np.float64)
  if len(lx) < 2 or np.ptp(lx) == 0:
    return float(np.mean(y)), 0.0
  b, a = np.polyfit(lx, y, 1)
  return float(a), float(b)
