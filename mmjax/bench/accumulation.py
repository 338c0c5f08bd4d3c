"""Gradient accumulation's cost: one step of a global batch as one batch and as K micro-batches
('batch': the whole batch's negatives, exact; 'micro': each micro-batch's own), back to back in
one process: step time, examples/s and XLA's per-device memory of the compiled step.

  python -m mmjax.bench.accumulation --config=configs/default.py --config.batch_size=64 \\
      [--accum=4,8] [--steps=10] [--warmup=2] [--repeats=3] [--config.KEY=VALUE ...]

The last stdout line is one JSON list, a record per variant (mmjax.bench.step's fields plus
grad_accum_steps and grad_accum_negatives). The same table for any other keys:
`python -m mmjax.bench.step --vary=KEY=V1,V2`.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import json

from absl import app, flags

from mmjax.bench import step as step_bench  # its flags: --config, --steps, --warmup, --repeats

_ACCUM = flags.DEFINE_list("accum", ["4"], "Micro-batch counts K to compare with K=1.")


def variants(accum):
  """The whole batch once, then each K in both modes, as config overrides."""
  return [{"grad_accum_steps": 1}] + [
      {"grad_accum_steps": int(k), "grad_accum_negatives": mode}
      for k in accum for mode in ("batch", "micro")]


def main(argv):
  del argv
  if not all(k.isdigit() and int(k) > 1 for k in _ACCUM.value):
    raise app.UsageError(f"--accum={','.join(_ACCUM.value)}: give micro-batch counts > 1, "
                         "e.g. --accum=4,8")
  config, steps, warmup, repeats = step_bench.flag_settings()
  rows = step_bench.compare(config, variants(_ACCUM.value), steps, warmup, repeats)
  for r in rows:
    r.update(grad_accum_steps=r["variant"]["grad_accum_steps"],
             grad_accum_negatives=r["variant"].get("grad_accum_negatives", "batch"))
  step_bench.print_table(rows)
  print(json.dumps(rows))


if __name__ == "__main__":
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
