"""Pallas attention kernels behind `attention.impl = pallas_gpu | pallas_tpu`.

  pallas_gpu  mmjax.kernels.pallas_gpu.flash_attention: Pallas/Triton flash attention with its
              own dQ and dK/dV kernels, separate q / kv segment ids (derived from jax's
              deprecated ops/gpu/attention.py `mha`).
  pallas_tpu  mmjax.kernels.pallas_tpu.splash_attention: jax's splash attention (Mosaic TPU),
              vmapped over the batch, padding and masks as segment ids.

Both take mmjax's layout (q [B, Nq, H, D], k/v [B, Nk, H, D]) and structural masks, pad lengths
to block multiples themselves, and are differentiable (custom_vjp with Pallas backward kernels).

Interpret mode: `interpret=None` means "interpret when the default backend is not the kernel's
platform" (so CPU tests run both kernels), and MMJAX_PALLAS_INTERPRET=1 forces it.

Meshes: a Pallas custom call cannot be partitioned by XLA. When a mesh is in context
(`jax.set_mesh(mesh)`, as mmjax.train_lib does) and has more than one device, the kernel runs per
shard in `shard_map` over the batch axes `BATCH_AXES` and the head axis `HEAD_AXIS` (the
project's mesh names, mmjax.sharding); the sequence axes must not be sharded.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp

BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"
_PLATFORM = {"pallas_gpu": "gpu", "pallas_tpu": "tpu"}


def default_interpret(choice: str) -> bool:
  """MMJAX_PALLAS_INTERPRET=1 forces interpret mode, =0 forbids it (e.g. to lower for a
  compile-only TPU topology from a CPU process); unset: interpret off the kernel's platform."""
  env = os.environ.get("MMJAX_PALLAS_INTERPRET", "").strip().lower()
  if env in ("1", "true", "yes"):
    return True
  if env in ("0", "false", "no"):
    return False
  return jax.default_backend() != _PLATFORM[choice]


def _context_mesh():
  """The mesh set by jax.set_mesh / `with mesh:` if it has > 1 device, else None."""
  try:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty and mesh.size > 1:
      return mesh
  except Exception:  # pragma: no cover - older jax
    pass
  try:
    from jax._src import mesh as mesh_lib  # noqa: PLC0415
    mesh = mesh_lib.thread_resources.env.physical_mesh
    if not mesh.empty and mesh.size > 1:
      return mesh
  except Exception:  # pragma: no cover
    pass
  return None


def kernel_fn(choice: str, interpret: Optional[bool] = None):
  """The local (per-shard) kernel for `choice` as fn(q, k, v, kv_mask=, q_segment_ids=, ...)."""
  if choice not in _PLATFORM:
    raise ValueError(f"unknown Pallas kernel {choice!r}; expected pallas_gpu or pallas_tpu")
  interpret = default_interpret(choice) if interpret is None else bool(interpret)
  if choice == "pallas_gpu":
    from mmjax.kernels import pallas_gpu  # noqa: PLC0415
    return functools.partial(pallas_gpu.flash_attention, interpret=interpret)
  from mmjax.kernels import pallas_tpu  # noqa: PLC0415
  return functools.partial(pallas_tpu.splash_attention, interpret=interpret)


def pallas_attention(choice: str, q, k, v, *, kv_mask=None, q_segment_ids=None,
                     kv_segment_ids=None, q_positions=None, kv_positions=None,
                     interpret: Optional[bool] = None, mesh=None):
  """Attention through a Pallas kernel; shard_map'ed over batch/heads when a mesh is active.

  q_positions [B, Nq] / kv_positions [B, Nk] (pallas_gpu only): key j visible to query i only
  where kv_positions[b, j] <= q_positions[b, i] (causal / prefix-LM / decoding)."""
  has_pos = q_positions is not None or kv_positions is not None
  if has_pos and choice == "pallas_tpu":
    raise ValueError("attention.impl=pallas_tpu takes static masks only (splash); per-token "
                     "positions (causal / prefix-LM / decoding) need attention.impl=auto, xla "
                     "or chunked")
  fn = kernel_fn(choice, interpret)
  masks = dict(kv_mask=kv_mask, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
  if has_pos:  # only when given, so the no-position call is exactly the old one
    if q_positions is None or kv_positions is None:
      raise ValueError("pallas attention: q_positions and kv_positions go together "
                       "(give both or neither)")
    b = q.shape[0]
    masks.update(q_positions=jnp.broadcast_to(q_positions, (b, q.shape[1])),
                 kv_positions=jnp.broadcast_to(kv_positions, (b, k.shape[1])))
  mesh = mesh if mesh is not None else _context_mesh()
  if mesh is None:
    return fn(q, k, v, **masks)
  from mmjax.kernels import pallas_tpu  # noqa: PLC0415
  return pallas_tpu.shard_kernel(fn, q, k, v, mesh=mesh, batch_axes=BATCH_AXES,
                                 head_axis=HEAD_AXIS, **masks)


def supported(choice: str, q, k) -> bool:
  if choice == "pallas_gpu":
    from mmjax.kernels import pallas_gpu  # noqa: PLC0415
    return pallas_gpu.supported(q, k)
  from mmjax.kernels import pallas_tpu  # noqa: PLC0415
  return pallas_tpu.supported(q, k)
