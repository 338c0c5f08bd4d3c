"""Splash attention (Pallas/Mosaic TPU) with padding masks and segment ids, batched and sharded.

jax's splash kernel (`jax.experimental.pallas.ops.tpu.splash_attention`) works on one example:
q [H, Nq, D], k/v [H, Nk, D], a static per-head mask (here `MultiHeadMask` of `FullMask`s, so no
block is skipped) and dynamic `SegmentIds(q=[Nq], kv=[Nk])`. It has its own dQ and dK/dV
backward kernels (a custom_vjp), so jax.grad works through it.

What this module adds:
* layout: mmjax's [B, N, H, D] is transposed to [B, H, N, D] and the kernel is vmapped over B;
  q is pre-scaled by 1/sqrt(D) (splash does not scale logits);
* padding: splash needs lengths that are multiples of its blocks (multiples of 128). Nq and Nk
  are padded up to multiples of 128 and blocks of 512/256/128 are picked to divide them;
  padded and masked keys get segment id `KV_PAD_ID`, padded query rows `Q_PAD_ID`, and the
  output is sliced back. User segment ids must be > Q_PAD_ID (any non-negative id works);
* rows with no valid key: splash's mask value is finite, so such a row comes out as the mean of
  v (never NaN); `mmjax.attention.attention_kernel` zeroes these rows;
* sharding: a Mosaic call cannot be partitioned by XLA, so under a mesh the kernel must run
  per shard inside `shard_map` over the batch axes (and the head axis when heads are
  tensor-sharded): `splash_attention_sharded`. `mmjax.kernels.pallas_attention` does this on its
  own when a mesh is set (`jax.set_mesh`, as train_lib does);
* interpret mode: on a machine without TPU, `interpret=True` runs the kernels in Pallas' TPU
  interpreter (`pltpu.InterpretParams()`, the same thing `pltpu.force_tpu_interpret_mode()`
  does for every call traced under it). That interpreter cannot batch a pallas_call (jax
  0.12: vmap adds a grid axis its dimension semantics lack), so interpret mode loops over the
  batch with lax.map; compiled TPU code uses vmap (checked by compiling for a v5e topology).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mmjax.kernels.common import KV_PAD_ID, Q_PAD_ID

LANES = 128  # splash's block sizes must be multiples of the 128-wide lane dimension


def _splash():
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # noqa: PLC0415
  return sa


def _interpret_arg(interpret: bool):
  if not interpret:
    return False
  try:
    from jax.experimental.pallas import tpu as pltpu  # noqa: PLC0415
    return pltpu.InterpretParams()  # TPU interpreter: simulates VMEM/SMEM, DMAs, semaphores
  except (ImportError, AttributeError):  # pragma: no cover - older jax
    return True


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _block(length: int, cap: int = 512) -> int:
  for b in (512, 256, 128):
    if b <= cap and length % b == 0:
      return b
  return LANES


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, lq: int, lk: int, bq: int, bkv: int, interpret: bool, fused_bwd: bool):
  sa = _splash()
  mask = sa.MultiHeadMask([sa.FullMask((lq, lk)) for _ in range(heads)])
  if fused_bwd:
    blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                           block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                           use_fused_bwd_kernel=True)
  else:
    blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                           block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                           block_kv_dq=bkv)
  return sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                            interpret=_interpret_arg(interpret))


def splash_attention(q, k, v, *, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                     interpret: bool = False, max_block: int = 512, fused_bwd: bool = False):
  """Splash attention on local (unsharded or per-shard) arrays. q [B,Nq,H,D], k/v [B,Nk,H,D]."""
  b, nq, h, d = q.shape
  nk = k.shape[1]
  if k.shape != (b, nk, h, d) or v.shape != k.shape:
    raise ValueError(f"pallas_tpu attention: q {q.shape}, k {k.shape}, v {v.shape} must be "
                     "[B, N, H, D] with equal B, H, D")
  lq, lk = _round_up(nq, LANES), _round_up(nk, LANES)
  bq, bkv = _block(lq, max_block), _block(lk, max_block)
  use_seg = q_segment_ids is not None and kv_segment_ids is not None
  qs = q_segment_ids.astype(jnp.int32) if use_seg else jnp.zeros((b, nq), jnp.int32)
  ks = kv_segment_ids.astype(jnp.int32) if use_seg else jnp.zeros((b, nk), jnp.int32)
  if kv_mask is not None:
    ks = jnp.where(kv_mask.astype(bool), ks, KV_PAD_ID)
  qs = jnp.pad(qs, ((0, 0), (0, lq - nq)), constant_values=Q_PAD_ID)
  ks = jnp.pad(ks, ((0, 0), (0, lk - nk)), constant_values=KV_PAD_ID)
  need_seg = use_seg or kv_mask is not None or lk != nk
  scale = 1.0 / math.sqrt(d)
  # [B, N, H, D] -> [B, H, N, D], padded along N.
  qt = jnp.pad((q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3),
               ((0, 0), (0, 0), (0, lq - nq), (0, 0)))
  kt = jnp.pad(k.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, lk - nk), (0, 0)))
  vt = jnp.pad(v.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, lk - nk), (0, 0)))
  kernel = _kernel(h, lq, lk, bq, bkv, bool(interpret), bool(fused_bwd))
  sa = _splash()
  if need_seg:
    one = lambda xs: kernel(xs[0], xs[1], xs[2], segment_ids=sa.SegmentIds(q=xs[3], kv=xs[4]))
    xs = (qt, kt, vt, qs, ks)
  else:
    one = lambda xs: kernel(xs[0], xs[1], xs[2])
    xs = (qt, kt, vt)
  if interpret:
    # Pallas' TPU interpreter cannot batch a pallas_call (vmap adds a grid axis that its
    # dimension semantics lack), so interpret mode loops over the batch instead.
    out = jax.lax.map(one, xs)
  else:
    out = jax.vmap(one)(xs)
  return out[:, :, :nq].transpose(0, 2, 1, 3).astype(q.dtype)


def _axes_in(mesh, axes, dim: int) -> Tuple[str, ...]:
  """The axes of `axes` that exist in `mesh` with size > 1, if their product divides dim."""
  names = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
  size = math.prod(mesh.shape[a] for a in names) if names else 1
  if dim % size:
    logging.warning("pallas attention under mesh %s: dimension %d is not divisible by mesh "
                    "axes %s; running it unsplit on every shard (replicated)",
                    dict(mesh.shape), dim, names)
    return ()
  return names


def shard_kernel(fn, q, k, v, *, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                 q_positions=None, kv_positions=None,
                 mesh, batch_axes: Sequence[str] = ("data", "fsdp"),
                 head_axis: Optional[str] = "tensor"):
  """Run fn(q, k, v, kv_mask=, q_segment_ids=, kv_segment_ids=) per shard under shard_map.

  Batch is split over `batch_axes` (those present in the mesh), heads over `head_axis` (if
  present and > 1); sequence and head_dim stay whole on every shard (attention needs all keys).
  Per-token [B, N] arrays (masks, segment ids, q_positions / kv_positions) split like the batch;
  positions reach fn only when given.
  """
  b, _, h, _ = q.shape
  bax = _axes_in(mesh, batch_axes, b)
  hax = _axes_in(mesh, (head_axis,) if head_axis else (), h)
  bspec = (bax if len(bax) > 1 else bax[0]) if bax else None
  hspec = hax[0] if hax else None
  x_spec = P(bspec, None, hspec, None)
  row = P(bspec, None)
  args = (q, k, v, kv_mask, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  specs = (x_spec, x_spec, x_spec) + tuple(None if a is None else row for a in args[3:])

  def local(q, k, v, m, qs, ks, qp, kp):
    pos = {} if qp is None and kp is None else dict(q_positions=qp, kv_positions=kp)
    return fn(q, k, v, kv_mask=m, q_segment_ids=qs, kv_segment_ids=ks, **pos)

  present = [i for i, a in enumerate(args) if a is not None]

  def body(*xs):
    full = [None] * len(args)
    for i, x in zip(present, xs):
      full[i] = x
    return local(*full)

  shard_map = getattr(jax, "shard_map", None)
  if shard_map is None:  # pragma: no cover - jax < 0.7
    from jax.experimental.shard_map import shard_map  # noqa: PLC0415
    kw = dict(check_rep=False)
  else:
    kw = dict(check_vma=False)
  return shard_map(body, mesh=mesh, in_specs=tuple(specs[i] for i in present),
                   out_specs=x_spec, **kw)(*(args[i] for i in present))


def splash_attention_sharded(q, k, v, *, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                             mesh, batch_axes: Sequence[str] = ("data", "fsdp"),
                             head_axis: Optional[str] = "tensor", interpret: bool = False,
                             fused_bwd: bool = False):
  """`splash_attention` inside shard_map over the batch (and head) mesh axes."""
  fn = functools.partial(splash_attention, interpret=interpret, fused_bwd=fused_bwd)
  return shard_kernel(fn, q, k, v, kv_mask=kv_mask, q_segment_ids=q_segment_ids,
                      kv_segment_ids=kv_segment_ids, mesh=mesh, batch_axes=batch_axes,
                      head_axis=head_axis)


def supported(q, k) -> bool:
  """Head dims splash lowers well: 64 or a multiple of 128 (lengths are padded)."""
  d = q.shape[-1]
  return d == k.shape[-1] and (d == 64 or d % 128 == 0)
