"""Compile the real train step for a TPU pod slice on a CPU machine (libtpu compile-only devices).

  JAX_PLATFORMS=cpu python -m mmjax.bench.pod_compile --config=configs/pod_clip_vit_l14.py \\
      --topology=v5p:4x4x4 [--batch_per_chip=16] [--config.mesh.fsdp=-1 ...]

Nothing is materialized: the state is train_lib.abstract_state's jax.ShapeDtypeStructs
(with their NamedShardings over the topology's chips) and the batch is abstract too. The step is
train_lib.make_train_step's, lowered and compiled by libtpu for the topology. Reports per-chip
memory (perf.memory_bytes: argument + output + temp - aliased) against the chip's
HBM, FLOPs per step (perf.step_flops of the lowered, global program), and a roofline step time
(FLOPs per chip / dense bf16 peak) at 100% and at an assumed MFU (--mfu, default 0.5).
Prints one JSON line. A config that does not fit exits 1 with a one-line message.

Environment: the module sets TPU_SKIP_MDS_QUERY=1 and JAX_PLATFORMS=cpu if unset and drops a
--xla_force_host_platform_device_count from XLA_FLAGS before jax is imported (the mesh is the
topology's chips, not CPU devices).
"""
from __future__ import annotations

import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("MMJAX_PALLAS_INTERPRET", "0")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compile-only runs at once
if "XLA_FLAGS" in os.environ:
  os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                   os.environ["XLA_FLAGS"]).strip()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mmjax import models, sharding, train_lib  # noqa: E402
from mmjax.perf import memory_bytes, step_flops  # noqa: E402

GIB = 2 ** 30
# Per-chip HBM (GiB) and dense bf16 peak (TFLOP/s), by the topology name's prefix.
CHIPS = {"v5p": (95, 459.0), "v5e": (16, 197.0), "v5litepod": (16, 197.0), "v4": (32, 275.0),
         "v6e": (32, 918.0)}


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


def global_step_flops(config, batch_size: int) -> float:
  """FLOPs of one global train step: perf.step_flops of the same step lowered (not compiled) on
  one CPU device with layers unrolled. Both the compile-only TPU client (no lowered cost
  analysis) and a scanned step (XLA counts a while-loop body once, not once per layer) would
  under-count; remat recomputation is kept."""
  c = config.copy_and_resolve_references()
  c.model.scan = False
  c.batch_size = batch_size
  c.mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  mesh = sharding.make_mesh(c.mesh, jax.devices("cpu")[:1])
  model = models.build_model(c)
  tx, schedule = train_lib.make_optimizer(c)
  state, shard = train_lib.abstract_state(model, tx, mesh)
  step = train_lib.make_train_step(c, model, tx, schedule, mesh, shard)
  return step_flops(step.lower(state, abstract_batch(c, batch_size, mesh)))


def compile_for_topology(config, topology: str, batch_per_chip=None, mfu: float = 0.5):
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  gen, (hbm_gib, peak) = chip_spec(topology)
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
  info = {"config_fusion": config.model.fusion, "topology": topology, "chips": n,
          "mesh": dict(mesh.shape), "batch_size": batch_size, "hbm_gib": hbm_gib}
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
  compiled_flops_chip = float(cost.get("flops", 0.0))
  flops, flops_source = global_step_flops(config, batch_size), "lowered unscanned step on CPU"
  flops_chip = flops / n
  roofline_s = flops_chip / (peak * 1e12)
  return {
      "config_fusion": config.model.fusion, "topology": topology, "chips": n,
      "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape),
      "batch_size": batch_size, "batch_per_chip": batch_size / n, "params": n_params,
      "dtype": config.model.dtype, "remat": config.model.get("remat", "none"),
      "scan": bool(config.model.get("scan", False)),
      "mem_per_chip_bytes": per_chip, "mem_per_chip_gib": per_chip / GIB,
      "mem_argument_bytes": int(mem.argument_size_in_bytes),
      "mem_output_bytes": int(mem.output_size_in_bytes),
      "mem_temp_bytes": int(mem.temp_size_in_bytes),
      "mem_alias_bytes": int(mem.alias_size_in_bytes),
      "hbm_gib": hbm_gib, "fits": per_chip <= hbm_gib * GIB,
      "flops_per_step": flops, "flops_source": flops_source,
      "tpu_compiled_flops_per_chip_loop_bodies_once": compiled_flops_chip, "flops_per_chip": flops_chip, "peak_tflops_bf16": peak,
      "roofline_step_s_at_100pct": roofline_s, "assumed_mfu": mfu,
      "est_step_s_at_mfu": roofline_s / mfu,
      "est_examples_per_s_at_mfu": batch_size / (roofline_s / mfu),
      "lower_s": t1 - t0, "compile_s": compile_s,
  }


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
