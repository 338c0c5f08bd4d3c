"""Which JAX platforms the command-line entry points initialize when JAX_PLATFORMS is unset.

With libtpu installed (the `tpu` extra, for compiling pod steps on a CPU host), JAX would
initialize the TPU backend on every machine, and on one without TPUs libtpu prints errors about
TPU_WORKER_HOSTNAMES that read like a failure. A TPU VM exposes its chips as /dev/accel* (v2-v5e)
or /dev/vfio (v5p, v6e); without either, the TPU backend is left out: JAX_PLATFORMS becomes
'cuda,cpu' where a CUDA plugin is installed and an NVIDIA device is present (/dev/nvidia0),
else 'cpu'. A JAX_PLATFORMS the user set is kept.
"""
from __future__ import annotations

import glob
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
