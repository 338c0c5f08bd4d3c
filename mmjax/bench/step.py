"""Train-step benchmark: steps/s, examples/s, TFLOP/s per device and MFU against a named peak.

  python -m mmjax.bench.step --config=configs/default.py [--steps=10] [--warmup=2] [--repeats=3]
      [--config.batch_size=...] [--config.model.dtype=bfloat16]
      [--vary=model.patch_dropout=0,0.5,0.75 ...]

--vary=KEY=V1,V2,... (repeatable) benchmarks every combination of the values back to back in
this one process and prints a table; its last line is then a JSON list, a record per variant
with its keys under "variant".

Two FLOP counts per step, both XLA's cost analysis of lowered programs (train_lib.flop_counts;
the lowered HLO is used because a GPU executable's own count misses the matmuls handed to
cuBLAS), divided over the devices:
  model FLOPs    3 x the forward loss (backward = 2 x forward; no recomputation, no optimizer)
                 -> `mfu`, `tflops_per_device`
  hardware FLOPs the step as compiled (remat recomputation and the optimizer included)
                 -> `hfu`, `hw_tflops_per_device`
Peak: on CPU a float32 2048^3 matmul measured in the same run; on GPU and TPU the chip's dense
bf16 peak from its data sheet (a measured bf16 matmul peak is printed beside it on GPU).
The last stdout line is one JSON object (step_s, examples_per_s, tflops_per_device,
peak_tflops, mfu, hfu, ...).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import copy
import dataclasses
import itertools
import json
import os
import time
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mmjax import cli, configure, models, sharding, train_lib
from mmjax.perf import chip_peak, memory_bytes, processor, time_steps

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.",
                                          lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed windows of --steps steps; the fastest "
                                "counts (metrics stay on the device within a window).")
_VARY = flags.DEFINE_multi_string("vary", [], "KEY=V1,V2,...: benchmark each value of a config "
                                  "key (every combination of several), back to back.")


def synthetic_batch(config, seed: int = 0):
  """Random inputs of the config's shapes and batch size (text: valid ids with padding).
  `config`: a ConfigDict or a Config."""
  cfg = configure.resolve(config)
  rng = np.random.RandomState(seed)
  batch = models.dummy_batch(cfg, cfg.batch_size)
  for m, x in batch.items():
    if isinstance(x, dict):
      batch[m] = {k: (rng.randn(*v.shape).astype(v.dtype) if v.dtype != bool else v)
                  for k, v in x.items()}
    elif x.dtype == np.int32:
      vocab = cfg.model.modality(m).option("vocab_size")
      ids = rng.randint(5, vocab, size=x.shape).astype(np.int32)
      ids[:, 0] = 1
      lengths = rng.randint(x.shape[1] // 2, x.shape[1] + 1, size=x.shape[0])
      ids[np.arange(x.shape[1])[None] >= lengths[:, None]] = 0
      batch[m] = ids
    else:
      batch[m] = rng.randn(*x.shape).astype(np.float32)
  return batch


def benchmark(config, steps: int, warmup: int, repeats: int = 3, batch=None):
  """One config's train step timed (the record below); `batch`: host inputs to time it on
  (default: synthetic_batch)."""
  cfg = configure.resolve(config)
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh))
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
  batch = jax.device_put(synthetic_batch(cfg) if batch is None else batch,
                         sharding.batch_sharding(mesh))
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  step = lowered.compile()
  compile_s = time.perf_counter() - t0
  model_flops, hw_flops = train_lib.flop_counts(cfg, mesh, batch, lowered)
  model_flops, hw_flops = model_flops / mesh.size, hw_flops / mesh.size  # per device
  state, metrics, step_s = time_steps(step, state, batch, steps, warmup, repeats)
  peak, peak_name = chip_peak()
  tflops, hw_tflops = model_flops / step_s / 1e12, hw_flops / step_s / 1e12
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return {
      "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "fusion": cfg.model.fusion.name, "dtype": jnp.dtype(cfg.model.block.dtype).name,
      "batch_size": cfg.batch_size, "params": n_params, "compile_s": compile_s,
      "step_s": step_s, "steps_per_s": 1 / step_s, "examples_per_s": cfg.batch_size / step_s,
      "remat": cfg.model.block.remat, "attention": cfg.model.block.attention_impl,
      "model_flops_per_step_per_device": model_flops,
      "hw_flops_per_step_per_device": hw_flops, "tflops_per_device": tflops,
      "hw_tflops_per_device": hw_tflops, "peak_tflops": peak, "peak": peak_name,
      "mfu": tflops / peak, "hfu": hw_tflops / peak,
      "memory_bytes_per_device": memory_bytes(step), "loss": float(metrics["loss"]),
  }


def flag_settings():
  """(config, steps, warmup, repeats) from this module's flags, for benchmarks built on it."""
  return _CONFIG.value, _STEPS.value, _WARMUP.value, _REPEATS.value



def parse_vary(specs: Sequence[str]) -> List[Dict]:
  """['a.b=1,2', 'c=x'] -> [{'a.b': 1, 'c': 'x'}, {'a.b': 2, 'c': 'x'}]."""
  axes = []
  for spec in specs:
    key, sep, values = spec.partition("=")
    if not sep or not key or not values:
      raise ValueError(f"--vary={spec!r} is not KEY=V1,V2,...; e.g. --vary=model.patch_dropout=0,0.5")
    axes.append([(key, cli.literal(v)) for v in values.split(",")])
  return [dict(combo) for combo in itertools.product(*axes)]


def compare(config, variants: Sequence[Dict], steps: int, warmup: int, repeats: int):
  """benchmark() of each variant of `config` ({dotted key: value}), back to back in this
  process: a record per variant, its keys under 'variant', the host CPU under 'processor'."""
  rows = []
  for variant in variants:
    c = copy.deepcopy(config)
    for key, value in variant.items():
      *path, last = key.split(".")
      node = c
      for part in path:
        node = node[part]
      node[last] = value
    res = benchmark(c, steps, warmup, repeats)
    res.update(variant=dict(variant), processor=processor())
    rows.append(res)
  return rows


def print_table(rows) -> None:
  r0 = rows[0]
  print(f"{r0['fusion']} on {r0['num_devices']} x {r0['device']} ({r0['processor']}), global "
        f"batch {r0['batch_size']}, {r0['dtype']}")
  print(f"  {'variant':<44} {'step s':>8} {'ex/s':>8} {'GFLOP':>8} {'MiB/dev':>9} {'MFU':>7} "
        f"{'HFU':>7}")
  for r in rows:
    name = " ".join(f"{k}={v}" for k, v in r["variant"].items())
    print(f"  {name:<44} {r['step_s']:>8.3f} {r['examples_per_s']:>8.1f} "
          f"{r['model_flops_per_step_per_device'] / 1e9:>8.2f} "
          f"{r['memory_bytes_per_device'] / 2**20:>9.1f} {r['mfu']:>7.2%} {r['hfu']:>7.2%}")


def main(argv):
  del argv
  if _VARY.value:
    try:
      variants = parse_vary(_VARY.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    rows = compare(_CONFIG.value, variants, _STEPS.value, _WARMUP.value, _REPEATS.value)
    print_table(rows)
    print(json.dumps(rows))
    return
  res = benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value, _REPEATS.value)
  print(f"{res['fusion']} on {res['num_devices']} x {res['device']}: "
        f"{res['params'] / 1e6:.1f}M params, batch {res['batch_size']}, {res['dtype']}")
  print(f"  step {res['step_s'] * 1e3:.1f} ms  |  {res['examples_per_s']:.1f} examples/s  |  "
        f"{res['tflops_per_device'] * 1e3:.1f} model GFLOP/s per device  |  MFU {res['mfu']:.1%}"
        f"  HFU {res['hfu']:.1%} of {res['peak_tflops'] * 1e3:.1f} GFLOP/s ({res['peak']})")
  print(json.dumps(res))


if __name__ == "__main__":
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
