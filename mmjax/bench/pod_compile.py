"""Compile the real train step for a TPU pod slice on a CPU machine (libtpu compile-only devices).

  JAX_PLATFORMS=cpu python -m mmjax.bench.pod_compile --config=configs/pod_clip_vit_l14.py \\
      --topology=v5p:4x4x4 [--batch_per_chip=16] [--config.mesh.fsdp=-1 ...]

Nothing is materialized: the state is train_lib.abstract_state's jax.ShapeDtypeStructs
(with their NamedShardings over the topology's chips) and the batch is abstract too. The step is
train_lib.make_train_step's, lowered and compiled by libtpu for the topology; attention
impl `auto` resolves for the mesh's platform (tpu: splash / pallas_tpu for >= 256 tokens with
head_dim 64 or a multiple of 128), and the backends it chose are printed (one stderr line) and
reported (`attention`). Reports per-chip memory (perf.memory_bytes: argument + output + temp -
aliased) against the chip's HBM; model and hardware FLOPs per step (train_lib.flop_counts of the
step lowered unscanned on one CPU device); roofline step times (FLOPs per chip / dense bf16
peak) at 100% and at an assumed MFU (--mfu, default 0.5); and an *estimated* step time from
the TPU executable's cost analysis (max(compute, HBM traffic / bandwidth), see cost_estimate)
with the MFU / HFU it implies. None of these is a measurement.
Prints one JSON line. A config that does not fit exits 1 with a one-line message.

Environment: run as a program (never on import), the module sets TPU_SKIP_MDS_QUERY=1 and
JAX_PLATFORMS=cpu if unset, drops a --xla_force_host_platform_device_count from XLA_FLAGS (the
mesh is the topology's chips, not CPU devices) and applies mmjax's CPU defaults
(mmjax.platforms.apply_cpu_defaults), before jax is imported.
"""
from __future__ import annotations

import os
import re


def _set_process_env() -> None:
  """The program's environment (module doc), set before jax is imported; never on import."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("MMJAX_PALLAS_INTERPRET", "0")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compile-only runs at once
  if "XLA_FLAGS" in os.environ:
    os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                     os.environ["XLA_FLAGS"]).strip()
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)


if __name__ == "__main__":  # run as a program, not imported
  _set_process_env()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mmjax import attention, configure, models, sharding, train_lib  # noqa: E402
from mmjax.perf import memory_bytes, step_flops  # noqa: E402

GIB = 2 ** 30
# Per-chip HBM (GiB), dense bf16 peak (TFLOP/s) and HBM bandwidth (GB/s, data sheets), by the
# topology name's prefix.
CHIPS = {"v5p": (95, 459.0, 2765.0), "v5e": (16, 197.0, 819.0), "v5litepod": (16, 197.0, 819.0),
         "v4": (32, 275.0, 1228.0), "v6e": (32, 918.0, 1640.0)}


def chip_spec(topology: str):
  gen = topology.split(":")[0].split("-")[0].lower()
  if gen not in CHIPS:
    raise ValueError(f"unknown TPU generation {gen!r} in --topology={topology}; "
                     f"known: {', '.join(CHIPS)}")
  return gen, CHIPS[gen]


def abstract_batch(config, batch_size: int, mesh):
  """ShapeDtypeStructs of a global batch, sharded over data x fsdp (nothing allocated)."""
  one = models.dummy_batch(config, 1)
  sh = sharding.batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_size,) + x.shape[1:], x.dtype,
                                                     sharding=sh), one)


def step_flop_counts(config, batch_size: int):
  """(model FLOPs, hardware FLOPs, loop scale) of one global train step, on one CPU device.

  FLOPs: train_lib.flop_counts of the same step lowered (not compiled) on CPU (it unrolls
  scanned stacks itself). The compile-only TPU client has no cost analysis of a lowered module,
  and the TPU executable's own count sees a scanned stack's loop body once and a Pallas kernel
  (splash) not at all. Attention `auto` resolves for CPU there (xla), so the count includes the
  attention matmuls. Loop scale: unrolled / scanned hardware FLOPs of the CPU lowering (1.0 when
  nothing is scanned), the factor by which a loop-body-once count under-counts."""
  c = config.copy_and_resolve_references()
  c.batch_size = batch_size
  c.mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  mesh = sharding.make_mesh(c.mesh, jax.devices("cpu")[:1])
  batch = abstract_batch(c, batch_size, mesh)
  model_flops, hw_flops = train_lib.flop_counts(c, mesh, batch)
  loop_scale = 1.0
  pm = configure.resolve(c).model
  if pm.block.scan or any(t.scan for _, t in pm.tower_blocks):
    model = models.build_model(c)
    tx, schedule = train_lib.make_optimizer(c)
    state, shard = train_lib.abstract_state(model, tx, mesh)
    step = train_lib.make_train_step(c, model, tx, schedule, mesh, shard)
    scanned = step_flops(step.lower(state, batch))
    loop_scale = float(hw_flops) / scanned if scanned > 0 else 1.0
  return float(model_flops), float(hw_flops), loop_scale


_DTYPES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}


def tpu_attention_choices():
  """The backends `auto` picked for the TPU step, as 'pallas_tpu bf16 head_dim=64' strings."""
  return [f"{backend} {_DTYPES.get(dtype, dtype)} head_dim={d}"
          for platform, backend, dtype, d in attention.auto_choices() if platform == "tpu"]


def cost_estimate(cost: dict, hw_flops_chip: float, model_flops_chip: float, peak_tflops: float,
                  hbm_gbs: float, loop_scale: float = 1.0):
  """An estimated step time from the TPU executable's cost analysis: max(compute, memory) with
  compute = FLOPs / bf16 peak and memory = bytes accessed / HBM bandwidth, per chip.

  Compute uses the hardware FLOPs of the unrolled CPU lowering (the executable's own count
  misses loop iterations and Pallas kernels). The executable counts a scanned layer stack's
  loop body once, so its bytes are scaled by loop_scale = unrolled / scanned hardware FLOPs of
  the CPU lowering, i.e. the loop bodies are assumed to carry the same share of the bytes as of
  the FLOPs. Out-of-loop bytes (the optimizer's f32 update) are scaled too, so the memory time
  leans high; est_memory_s_loop_bodies_once is the unscaled lower end. Splash's own HBM
  traffic is whatever libtpu's analysis assigns its custom call. Ignores: collectives (FSDP all-gathers / reduce-scatters) and whether
  they overlap compute, per-op efficiency (MXU shape, fusion, kernel launch), and the host."""
  bytes_c = float(cost.get("bytes accessed", 0.0))
  scale = loop_scale
  compute_s = hw_flops_chip / (peak_tflops * 1e12)
  memory_s = bytes_c * scale / (hbm_gbs * 1e9)
  est = max(compute_s, memory_s)
  out = {"est_loop_scale": scale, "est_bytes_accessed_per_chip": bytes_c * scale,
         "est_compute_s": compute_s, "est_memory_s": memory_s,
         "est_memory_s_loop_bodies_once": bytes_c / (hbm_gbs * 1e9),
         "est_step_s": est, "est_bound": "compute" if compute_s >= memory_s else "memory",
         "est_mfu": model_flops_chip / est / (peak_tflops * 1e12) if est > 0 else 0.0,
         "est_hfu": hw_flops_chip / est / (peak_tflops * 1e12) if est > 0 else 0.0,
         "est_method": "estimate: max(hw FLOPs / bf16 peak, TPU bytes accessed x loop_scale / "
                       "HBM bandwidth) per chip; ignores collectives and their overlap, "
                       "per-op efficiency, host"}
  if "optimal_seconds" in cost:  # libtpu's own estimate (loop bodies once), when it has one
    out["tpu_cost_optimal_seconds"] = float(cost["optimal_seconds"])
  if float(cost.get("optimal_seconds", 0.0)) > 0:
    out["est_step_s_tpu_optimal_seconds_scaled"] = float(cost["optimal_seconds"]) * scale
  return out


def compile_for_topology(config, topology: str, batch_per_chip=None, mfu: float = 0.5):
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  gen, (hbm_gib, peak, hbm_gbs) = chip_spec(topology)
  t0 = time.perf_counter()
  topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  devices = list(topo.devices)
  n = len(devices)
  mesh = sharding.make_mesh(config.mesh, devices)
  batch_size = int(batch_per_chip * n) if batch_per_chip else int(config.batch_size)
  config.batch_size = batch_size
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % dp:
    raise ValueError(f"batch {batch_size} is not divisible by data x fsdp = {dp}")
  model = models.build_model(config)
  tx, schedule = train_lib.make_optimizer(config)
  state, shard = train_lib.abstract_state(model, tx, mesh)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  step = train_lib.make_train_step(config, model, tx, schedule, mesh, shard)
  batch = abstract_batch(config, batch_size, mesh)
  lowered = step.lower(state, batch)
  t1 = time.perf_counter()
  impl = (config.get("attention") or {}).get("impl", "auto")
  attn = tpu_attention_choices()  # before the CPU FLOP lowering adds its own (cpu) choices
  n_kernels = lowered.as_text().count("tpu_custom_call")
  print(f"pod_compile: compiled step attention backends (impl={impl}, "
        f"auto resolved for tpu): {', '.join(attn) or 'none via auto'}; "
        f"{n_kernels} tpu_custom_call ops in the lowered step", file=sys.stderr, flush=True)
  info = {"config_fusion": config.model.fusion, "topology": topology, "chips": n,
          "mesh": dict(mesh.shape), "batch_size": batch_size, "hbm_gib": hbm_gib,
          "attention": attn, "attention_impl": impl,
          "lowered_tpu_custom_calls": n_kernels}
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    # libtpu refuses programs over HBM at compile time ("Ran out of memory in memory space
    # hbm. Used X of Y hbm. Exceeded hbm capacity by Z").
    msg = str(e)
    if not ("hbm" in msg.lower() and ("RESOURCE_EXHAUSTED" in msg or "memory" in msg.lower())):
      raise
    m = (re.search(r"required for [^(]*\(([\d.]+)([KMGT])\)", msg) or
         re.search(r"Used ([\d.]+)([KMGT]) of", msg))
    scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    need = float(m.group(1)) * scale[m.group(2)] if m else float("nan")
    avail = (re.search(r"available HBM \(([\d.]+)([KMGT])\)", msg) or
             re.search(r"Used [\d.]+[KMGT] of ([\d.]+)([KMGT]) hbm", msg))
    if avail:  # what libtpu lets one program use (v4: less than the chip's 32 GiB)
      info["hbm_available_gib"] = float(avail.group(1)) * scale[avail.group(2)] / GIB
    info.update(fits=False, mem_per_chip_bytes=need, mem_per_chip_gib=need / GIB,
                compile_error=" ".join(msg.split())[:300],
                compile_s=time.perf_counter() - t1)
    return info
  compile_s = time.perf_counter() - t1
  mem = compiled.memory_analysis()
  per_chip = memory_bytes(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  cost = dict(cost or {})
  if os.environ.get("MMJAX_POD_COMPILE_COST_KEYS"):
    print(f"pod_compile: TPU cost_analysis keys: {sorted(cost)}", file=sys.stderr, flush=True)
  compiled_flops_chip = float(cost.get("flops", 0.0))
  t2 = time.perf_counter()
  model_flops, hw_flops, loop_scale = step_flop_counts(config, batch_size)
  flops_s = time.perf_counter() - t2
  flops_chip, model_flops_chip = hw_flops / n, model_flops / n
  roofline_s = flops_chip / (peak * 1e12)
  model_roofline_s = model_flops_chip / (peak * 1e12)
  r = dict(info)
  r.update({
      "device_kind": devices[0].device_kind,
      "batch_per_chip": batch_size / n, "params": n_params,
      "dtype": config.model.dtype, "remat": config.model.get("remat", "none"),
      "scan": bool(config.model.get("scan", False)),
      "mem_per_chip_bytes": per_chip, "mem_per_chip_gib": per_chip / GIB,
      "mem_argument_bytes": int(mem.argument_size_in_bytes),
      "mem_output_bytes": int(mem.output_size_in_bytes),
      "mem_temp_bytes": int(mem.temp_size_in_bytes),
      "mem_alias_bytes": int(mem.alias_size_in_bytes),
      "fits": per_chip <= hbm_gib * GIB,
      "model_flops_per_step": model_flops, "hw_flops_per_step": hw_flops,
      "flops_per_step": hw_flops,
      "flops_source": "train_lib.flop_counts: lowered unscanned step / 3 x forward on CPU",
      "tpu_compiled_flops_per_chip_loop_bodies_once": compiled_flops_chip,
      "tpu_compiled_bytes_accessed_per_chip_loop_bodies_once":
          float(cost.get("bytes accessed", 0.0)),
      "flops_per_chip": flops_chip, "model_flops_per_chip": model_flops_chip,
      "peak_tflops_bf16": peak, "hbm_gbs": hbm_gbs,
      "roofline_step_s_at_100pct": roofline_s,
      "model_roofline_step_s_at_100pct": model_roofline_s,
      "assumed_mfu": mfu,
      "est_step_s_at_mfu": model_roofline_s / mfu,
      "est_examples_per_s_at_mfu": batch_size / (model_roofline_s / mfu),
  })
  r.update(cost_estimate(cost, flops_chip, model_flops_chip, peak, hbm_gbs, loop_scale))
  r.update(lower_s=t1 - t0, compile_s=compile_s, flops_s=flops_s)
  return r


def not_fit_message(r) -> str:
  return (f"error: does not fit: {r['config_fusion']} batch {r['batch_size']} on {r['topology']} "
          f"({r['chips']} chips, mesh {r['mesh']}) needs {r['mem_per_chip_gib']:.2f} GiB per "
          f"chip > {r.get('hbm_available_gib', r['hbm_gib']):.2f} GiB of HBM available to it "
          f"(chip: {r['hbm_gib']} GiB HBM); "
          f"use more chips, a larger mesh.fsdp, "
          f"model.remat=full, or a smaller batch (--batch_per_chip)")


def _define_flags():
  config_flags.DEFINE_config_file("config", "configs/pod_clip_vit_l14.py", "Config file.",
                                  lock_config=False)
  flags.DEFINE_string("topology", "v5p:2x2x2", "libtpu topology name, e.g. v5e:4x4, v5p:4x4x4.")
  flags.DEFINE_float("batch_per_chip", None, "Global batch = this x chips (default: "
                     "config.batch_size).")
  flags.DEFINE_float("mfu", 0.5, "Assumed MFU for the estimated step time.")


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    r = compile_for_topology(f.config, f.topology, f.batch_per_chip, f.mfu)
  except ValueError as e:
    sys.exit(f"error: {' '.join(str(e).split())}")
  print(json.dumps(r), flush=True)
  if not r["fits"]:
    sys.exit(not_fit_message(r))


if __name__ == "__main__":
  _define_flags()
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
