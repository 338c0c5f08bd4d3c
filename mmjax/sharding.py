"""The device mesh, the one logical-axis rules table, and multi-host start-up.

Mesh axes: data (pure data parallel), fsdp (data parallel + parameter sharding), tensor
(Megatron-style: heads and MLP hidden sharded). The batch is sharded over data x fsdp.

Rules map logical names to mesh axes in order; flax skips a mesh axis already used in the
same array, so an activation [batch, length, embed] shards batch over (data, fsdp) and keeps
embed whole, while a parameter [embed, mlp] shards embed over fsdp and mlp over tensor.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: Tuple[Tuple[str, Optional[object]], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
)


def mesh_shape(mesh_cfg, num_devices: int) -> Tuple[int, int, int]:
  """(data, fsdp, tensor) from the config; one entry may be -1 (= the rest of the devices)."""
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: only one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} "
                       "devices; change mesh.data / mesh.fsdp / mesh.tensor")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices "
                     f"but {num_devices} are present; set one of mesh.data/fsdp/tensor to -1")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Optional[Sequence] = None) -> Mesh:
  """A mesh with Auto axes (linen's logical partitioning needs them)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * 3)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def _fit(spec: P, shape, mesh: Mesh) -> P:
  """Drop mesh axes from dims they do not divide (e.g. a 261-entry vocab over tensor=2)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(axes if size and dim % size == 0 else None)
  return P(*out)


def logical_shardings(abstract_tree, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a tree of (boxed) abstract variables, from the rules table."""
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  unboxed = nn.meta.unbox(abstract_tree)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, _fit(s, x.shape, mesh)), mesh_specs,
                      unboxed, is_leaf=lambda s: isinstance(s, P))


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Start jax.distributed when running multi-process. Returns True if it was started.

  Explicit: a coordinator address (flag or MMJAX_COORDINATOR) with the process count and id
  (flags or MMJAX_NUM_PROCESSES / MMJAX_PROCESS_ID). Automatic: TPU pods, SLURM and other
  clusters jax detects itself (jax.distributed.initialize() with no arguments).
  """
  coordinator = coordinator or os.environ.get("MMJAX_COORDINATOR")
  if coordinator and "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
  if coordinator:
    num_processes = int(num_processes or os.environ["MMJAX_NUM_PROCESSES"])
    process_id = int(process_id if process_id is not None else os.environ["MMJAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    logging.info("jax.distributed: process %d of %d via %s", process_id, num_processes,
                 coordinator)
    return True
  auto = ("SLURM_NTASKS" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1) or \
      "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  if auto:
    jax.distributed.initialize()
    return True
  return False


def strided_chunks(x, k: int, mesh=None):
  """[R, ...] -> [K, R / K, ...]: chunk i is rows i, K + i, 2K + i, ... (each chunk spread over
  the batch shards as the rows are: sharded over the batch axes on `mesh`)."""
  x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  if mesh is not None:
    x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES)))
  return x


def join_chunks(x):
  """[K, b, ...] -> [K * b, ...]: the inverse of `strided_chunks`."""
  return x.swapaxes(0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

