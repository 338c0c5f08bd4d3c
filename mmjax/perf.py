"""Peak FLOP/s of the chip at hand, FLOPs and memory of a compiled step (for TFLOP/s and MFU)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


# Dense bf16 peak TFLOP/s per chip (data sheets; SXM parts for GPUs).
PEAKS = {"h100": 989.4, "h200": 989.4, "h800": 989.4, "a100": 312.0, "l4": 121.0,
         "tpu v5p": 459.0, "tpu v5 lite": 197.0, "tpu v5e": 197.0, "tpu v4": 275.0,
         "tpu v6": 918.0, "tpu7x": 2307.0}


def measured_matmul_tflops(n: int, dtype, reps: int = 5) -> float:
  """TFLOP/s of an n^3 matmul on the default device, best of `reps`."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e12


def chip_peak():
  """(peak TFLOP/s, name of the peak) for this platform."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return measured_matmul_tflops(2048, jnp.float32), "measured f32 2048^3 matmul (this run)"
  kind = dev.device_kind.lower()
  for key, peak in PEAKS.items():
    if key in kind:
      return peak, f"{dev.device_kind} dense bf16 data-sheet peak"
  return measured_matmul_tflops(8192, jnp.bfloat16), "measured bf16 8192^3 matmul"


def step_flops(lowered) -> float:
  """FLOPs of one step of the whole (global) program, from XLA's cost analysis of the lowered,
  not yet optimized HLO. Platform-independent: a GPU executable's own cost analysis does not
  count the matmuls it hands to cuBLAS, so the compiled count under-reports there."""
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def memory_bytes(compiled) -> int:
  """Bytes a compiled executable needs on one device, from compiled.memory_analysis():
  arguments + outputs + temporaries - aliased (donated inputs reused as outputs)."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def time_steps(step, state, batch, steps: int, warmup: int = 1, repeats: int = 3):
  """Run `warmup` untimed calls of step(state, batch) -> (state, metrics), then `repeats`
  timed windows of `steps` calls each. Within a window nothing waits for the device: metrics
  stay on it, as in the training loop, so dispatch runs ahead; the window ends when the last
  step is done. Returns (state, metrics, seconds per step of the fastest window)."""
  metrics = None
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(state)
  best = float("inf")
  for _ in range(max(repeats, 1)):
    t = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    best = min(best, (time.perf_counter() - t) / steps)
  return state, metrics, best


def processor() -> str:
  """The host CPU as a person names it: its model and widest vector ISA, e.g. 'Intel(R)
  Xeon(R) Processor (AVX-512)', from /proc/cpuinfo ('' where there is none)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = f.read()
  except OSError:
    return ""
  field = lambda key: next((line.split(":", 1)[1].strip() for line in info.splitlines()  # noqa: E731
                            if line.startswith(key)), "")
  flags = set(field("flags").split())
  isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
  name = field("model name")
  return f"{name} ({isa})" if isa else name
