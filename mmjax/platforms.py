"""Which JAX platforms the command-line entry points initialize when JAX_PLATFORMS is unset,
and the XLA:CPU flag mmjax sets by default (set_default_xla_flags, run on `import mmjax`).

With libtpu installed (the `tpu` extra, for compiling pod steps on a CPU host), JAX would
initialize the TPU backend on every machine, and on one without TPUs libtpu prints errors about
TPU_WORKER_HOSTNAMES that read like a failure. A TPU VM exposes its chips as /dev/accel* (v2-v5e)
or /dev/vfio (v5p, v6e); without either, the TPU backend is left out: JAX_PLATFORMS becomes
'cuda,cpu' where a CUDA plugin is installed and an NVIDIA device is present (/dev/nvidia0),
else 'cpu'. A JAX_PLATFORMS the user set is kept.
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os

CUDA_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin")


def has_tpu_devices() -> bool:
  return bool(glob.glob("/dev/accel*")) or os.path.isdir("/dev/vfio")


def default_platforms() -> str:
  """'' (let JAX choose, TPU included) on a TPU host; else the non-TPU platforms present."""
  if has_tpu_devices():
    return ""
  if os.path.exists("/dev/nvidia0") and any(importlib.util.find_spec(p) for p in CUDA_PLUGINS):
    return "cuda,cpu"
  return "cpu"


def set_default_platforms() -> None:
  """Sets JAX_PLATFORMS before jax is imported, unless the user set it."""
  if "JAX_PLATFORMS" in os.environ:
    return
  chosen = default_platforms()
  if chosen:
    os.environ["JAX_PLATFORMS"] = chosen


# XLA:CPU in jaxlib 0.12 hands every float32 dot to YNNPACK (ynn_fusion_type=individual_dot);
# its plain dot path is 1.3-1.5x faster for the matmuls of a transformer step on the AVX2
# machines measured (docs/benchmarks.md, "mmjax vs open_clip"), with the same float32 results
# (a 2048^3 matmul: relative error 4e-7 vs float64, 1e-6 with YNNPACK).
# Not set: --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED made the CLIP step up to
# 1.4x faster on 2 cores, but XLA aborted in one of the test suite's training runs with it.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_dot",)


def _jaxlib_has_ynn() -> bool:
  try:
    major, minor = (int(x) for x in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return False
  return (major, minor) >= (0, 12)  # older XLA aborts on the unknown flag


def set_default_xla_flags() -> None:
  """Appends CPU_XLA_FLAGS to XLA_FLAGS (read when the backend starts, so this must run before
  the first computation), unless MMJAX_CPU_XLA_DEFAULTS=0, the user's XLA_FLAGS already set
  the same flag, or the installed jaxlib predates it."""
  if os.environ.get("MMJAX_CPU_XLA_DEFAULTS", "1") == "0" or not _jaxlib_has_ynn():
    return
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
