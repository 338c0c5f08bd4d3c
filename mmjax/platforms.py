"""Which JAX platforms the command-line entry points initialize when JAX_PLATFORMS is unset,
and mmjax's CPU process settings: one XLA:CPU flag (set_default_xla_flags) and glibc malloc
settings that stop every step from faulting in fresh pages (set_default_malloc).

`import mmjax` applies none of them: they change the whole process (os.environ, the C heap), so
they are the program's choice. train.py, eval.py, python -m mmjax.convert / mmjax.generate and
the benchmarks call set_default_platforms() and then apply_cpu_defaults() first thing, before
jax is imported; a program using mmjax as a library may do the same (docs/process_settings.md).

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
# `-individual_dot` gives them back to XLA's plain dot path, faster for the matmuls of a
# transformer step on the AVX2 machines measured, with float32 results as accurate (figures:
# docs/benchmarks.md, "mmjax vs open_clip"; docs/process_settings.md).
# Not set: --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED. It deadlocks programs
# with collectives over several CPU devices (configs/pod_fusion_1b.py on 8 simulated devices:
# an all-gather and an all-reduce wait on each other until XLA's 40 s rendezvous timeout aborts
# the process), and with the malloc settings below it no longer speeds up the CLIP step.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_dot",)


def _jaxlib_has_ynn() -> bool:
  try:
    major, minor = (int(x) for x in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return False
  return (major, minor) >= (0, 12)  # older XLA aborts on the unknown flag


def with_cpu_xla_flags(flags: str) -> str:
  """`flags` (an XLA_FLAGS value) with CPU_XLA_FLAGS appended, except a flag `flags` already
  sets; `flags` unchanged with MMJAX_CPU_XLA_DEFAULTS=0 or a jaxlib that predates the flag."""
  if os.environ.get("MMJAX_CPU_XLA_DEFAULTS", "1") == "0" or not _jaxlib_has_ynn():
    return flags
  extra = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
  return " ".join([flags, *extra]).strip() if extra else flags


def set_default_xla_flags() -> None:
  """Appends CPU_XLA_FLAGS to os.environ['XLA_FLAGS'] (with_cpu_xla_flags). XLA reads it when
  the backend starts, so this has effect only before the process's first computation."""
  flags = os.environ.get("XLA_FLAGS", "")
  chosen = with_cpu_xla_flags(flags)
  if chosen != flags:
    os.environ["XLA_FLAGS"] = chosen


# glibc malloc on a CPU-only JAX process. XLA:CPU allocates each execution's buffers (gigabytes
# for a ViT-B/16 train step) on its worker threads, and glibc serves those from per-thread arenas
# with mmap, munmap'ing them on free: every step faulted its whole working set back in, zeroed by
# the kernel. One arena (the main one, which grows by brk), no mmap, and no trimming keep the
# pages mapped, and the step makes no page faults (the figures: docs/benchmarks.md). The cost:
# the process keeps its peak heap until it exits, and threads share one arena lock.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8   # <malloc.h>
MALLOC_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
              "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
# The same settings as environment variables (read by glibc at process start), for another
# process: the benchmark gives them to the open_clip side for an equal-footing comparison.
MALLOC_SETTINGS_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                       "MALLOC_TRIM_THRESHOLD_": str(2**62)}
malloc_defaults_applied = False


def _cpu_only() -> bool:
  chosen = os.environ.get("JAX_PLATFORMS")
  chosen = default_platforms() if chosen is None else chosen
  return chosen.strip().lower() == "cpu"


def set_default_malloc() -> bool:
  """Applies MALLOC_SETTINGS with mallopt(3) and returns whether it did: only under glibc, in a
  process whose JAX platform is the CPU alone, unless MMJAX_CPU_MALLOC_DEFAULTS=0 or the user
  set glibc's malloc environment (MALLOC_ARENA_MAX, ..., GLIBC_TUNABLES=glibc.malloc.*).
  It must run before XLA's threads first allocate: before the process's first computation.
  Idempotent; malloc_defaults_applied records that it applied them."""
  global malloc_defaults_applied  # pylint: disable=global-statement
  if malloc_defaults_applied:
    return True
  if (os.environ.get("MMJAX_CPU_MALLOC_DEFAULTS", "1") == "0" or not _cpu_only()
      or any(k in os.environ for k in MALLOC_ENV)
      or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
    return False
  import ctypes  # pylint: disable=import-outside-toplevel
  import platform  # pylint: disable=import-outside-toplevel
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  malloc_defaults_applied = all(mallopt(p, v) == 1 for p, v in MALLOC_SETTINGS)
  return malloc_defaults_applied


def apply_cpu_defaults() -> None:
  """Applies mmjax's CPU process settings: the XLA:CPU flag (set_default_xla_flags) and the glibc
  malloc settings (set_default_malloc), each under its own conditions (jaxlib version, the
  user's own XLA_FLAGS / MALLOC_* / GLIBC_TUNABLES, a CPU-only JAX platform, the opt-outs
  MMJAX_CPU_XLA_DEFAULTS=0 and MMJAX_CPU_MALLOC_DEFAULTS=0). Idempotent.

  Call it first thing in a program, before jax is imported (and after set_default_platforms(),
  whose JAX_PLATFORMS decides whether the malloc settings apply): XLA reads XLA_FLAGS once, when
  its backend starts, and the malloc settings must precede XLA's first allocations. Called
  later, it changes os.environ for subprocesses but not this process's running backend.
  `import mmjax` never calls it; the entry points do. See docs/process_settings.md."""
  set_default_xla_flags()
  set_default_malloc()
