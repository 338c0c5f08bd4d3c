"""What mmjax's CPU malloc settings (mmjax/platforms.py) cost and save, on a toy train step.

  python -m mmjax.bench.malloc [--steps=40] [--rows=65536] [--width=256]

A 2-layer tanh MLP, SGD, one [rows, width] float32 batch (64 MiB at the defaults, and so is
each activation and its gradient): the step runs in a fresh subprocess with the settings on and
again with MMJAX_CPU_MALLOC_DEFAULTS=0, back to back. Per side: the median step time, page
faults and kernel (`sys`) seconds per step over the second half of the steps, and the peak RSS.
The last stdout line is one JSON object {"on": {...}, "off": {...}}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_STEP = r"""
import json, resource, statistics, sys, time
from mmjax import platforms
platforms.apply_cpu_defaults()  # as the entry points do (MMJAX_CPU_MALLOC_DEFAULTS picks a side)
import jax, jax.numpy as jnp
from mmjax.bench.versus_torch import peak_rss_mib
steps, rows, width = (int(a) for a in sys.argv[1:4])

def loss(w, x):
  return jnp.mean(jnp.tanh(jnp.tanh(x @ w[0]) @ w[1]) ** 2)

step = jax.jit(lambda w, x: jax.tree.map(lambda p, g: p - 0.1 * g, w, jax.grad(loss)(w, x)),
               donate_argnums=0)
x = jnp.ones((rows, width), jnp.float32)
w = [jnp.full((width, width), 0.01), jnp.full((width, width), 0.01)]
times, faults, sys_s = [], [], []
for _ in range(steps):
  ru, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  w = step(w, x)
  jax.block_until_ready(w)
  times.append(time.perf_counter() - t)
  after = resource.getrusage(resource.RUSAGE_SELF)
  faults.append(after.ru_minflt - ru.ru_minflt)
  sys_s.append(after.ru_stime - ru.ru_stime)
half = steps // 2
print(json.dumps({"applied": platforms.malloc_defaults_applied,
                  "step_s": statistics.median(times[half:]),
                  "faults_per_step": statistics.mean(faults[half:]),
                  "sys_s_per_step": statistics.mean(sys_s[half:]),
                  "peak_rss_mib": peak_rss_mib()}))
"""


def run(steps: int, rows: int, width: int, on: bool) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", MMJAX_CPU_MALLOC_DEFAULTS="1" if on else "0")
  p = subprocess.run([sys.executable, "-c", _STEP, str(steps), str(rows), str(width)], env=env,
                     capture_output=True, text=True, timeout=3600)
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode or not lines:
    raise SystemExit(f"error: the toy step failed: "
                     f"{(p.stderr.strip().splitlines() or ['no output'])[-1]}")
  return json.loads(lines[-1])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--rows", type=int, default=65536)
  p.add_argument("--width", type=int, default=256)
  a = p.parse_args(argv)
  res = {"on": run(a.steps, a.rows, a.width, True), "off": run(a.steps, a.rows, a.width, False),
         "steps": a.steps, "rows": a.rows, "width": a.width}
  for k in ("on", "off"):
    r = res[k]
    print(f"malloc settings {k:3s} (applied: {r['applied']}): step {r['step_s']:.3f} s, "
          f"{r['faults_per_step']:.0f} page faults and {r['sys_s_per_step']:.2f} s sys per step, "
          f"peak RSS {r['peak_rss_mib']:.0f} MiB")
  print(json.dumps(res))
  return 0


if __name__ == "__main__":
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # before jax is imported (docs/process_settings.md)
  sys.exit(main())
