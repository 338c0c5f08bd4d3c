"""Flash attention for NVIDIA GPUs, written in Pallas (Triton backend), with its own backward.

Derived from jax's `jax/experimental/pallas/ops/gpu/attention.py` (`mha`), which jax 0.11/0.12
mark deprecated (in favour of tokamax) and which cannot express what mmjax needs:

* it takes ONE `segment_ids` array shared by queries and keys, so it needs Nq == Nk and cannot
  say "this key is padding" without also changing the query at the same position; here queries
  and keys have their own segment ids (`q_segment_ids` [B, Nq], `kv_segment_ids` [B, Nk]), so
  cross-attention (Nq != Nk) and key padding work, and a padded position's query still attends
  to every valid key (same result as the xla reference at every position);
* its fused backward needs Nq / block_q == Nk / block_k; here dK/dV and dQ are two kernels
  (grid over key blocks, grid over query blocks), so any Nq, Nk work.

Masks become segment ids: a padded key gets `KV_PAD_ID`, a query-padding row (added to reach a
block multiple) gets `Q_PAD_ID`; no query matches a padded key. User segment ids must therefore
be > Q_PAD_ID (any non-negative id is fine). Lengths are padded to block multiples and head
dims to a power of two >= 16 (zero columns change neither q.k nor the output); the results
are sliced back. A query row whose keys are all masked gets the mean of v (finite, never NaN);
`mmjax.attention.attention_kernel` then zeroes such rows.

Positions (optional): with `q_positions` [B, Nq] and `kv_positions` [B, Nk] (int), key j is
visible to query i only where kv_positions[b, j] <= q_positions[b, i], on top of the segment /
padding mask. Causal attention is positions = arange(N) for both; prefix-LM gives every prefix
token position 0 and the suffix 1, 2, ...; decoding gives the query its position p and each
cache slot its own. Padded query rows get position Q_PAD_POS (int32 min) and padded keys
KV_PAD_POS (int32 max), so padding never unmasks anything. Without positions the kernels take
no extra inputs and compile exactly as before.

Layout: q [B, Nq, H, D], k/v [B, Nk, H, D] (same as mmjax.attention). Runs on CPU with
`interpret=True` (tests), on GPU through Triton: checked against xla (fwd, dq, dk, dv; f32, bf16;
head_dim 64/128/256) and timed on an H200 with jax 0.11.2 (docs/attention.md). Works with jax 0.11.2 and 0.12 (it only uses
`pl.pallas_call`, `pl.BlockSpec`, `pl.ds`, `pl.program_id`, `plgpu.dot`, `plgpu.CompilerParams`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:  # jax >= 0.4.3x: Triton-specific Pallas APIs
  from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover
  plgpu = None

from mmjax.kernels.common import KV_PAD_ID, MASK_VALUE, Q_PAD_ID

_LOG2E = math.log2(math.e)
# Positions of padded query rows / keys: kv_pos <= q_pos never holds for either (user positions
# must lie strictly between the two).
Q_PAD_POS = int(jnp.iinfo(jnp.int32).min)
KV_PAD_POS = int(jnp.iinfo(jnp.int32).max)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (powers of two, >= 16). Forward: block_q x block_k; backward: *_bwd."""
  block_q: int = 128
  block_k: int = 64
  block_q_bwd: int = 128
  block_k_bwd: int = 64
  num_warps: Optional[int] = 4
  num_stages: int = 2

  @classmethod
  def for_head_dim(cls, d: int, itemsize: int = 2) -> "BlockSizes":
    """Defaults measured on an H200 (bf16, B*H = 32, N = 8192, fwd+bwd; docs/attention.md):
    head_dim 64 -> 276 TFLOP/s, head_dim 128 -> 321 TFLOP/s. 4-byte inputs get smaller tiles
    (Hopper has 227 KiB of shared memory per block); head_dim 256 runs at ~90 TFLOP/s."""
    if itemsize >= 4:
      if d <= 64:
        return cls(128, 64, 128, 64, num_warps=4)
      if d <= 128:
        return cls(128, 64, 64, 32, num_warps=8)
      return cls(64, 32, 32, 32, num_warps=8)
    if d <= 64:
      return cls(128, 64, 128, 64, num_warps=4)
    if d <= 128:
      return cls(128, 128, 64, 64, num_warps=4)
    return cls(64, 64, 32, 32, num_warps=8)


def _env_blocks() -> Optional[BlockSizes]:
  """MMJAX_PALLAS_GPU_BLOCKS="block_q,block_k,block_q_bwd,block_k_bwd[,num_warps[,stages]]"."""
  spec = os.environ.get("MMJAX_PALLAS_GPU_BLOCKS", "").strip()
  if not spec:
    return None
  vals = [int(x) for x in spec.split(",")]
  names = ("block_q", "block_k", "block_q_bwd", "block_k_bwd", "num_warps", "num_stages")
  return BlockSizes(**dict(zip(names, vals)))


def _next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _params(num_warps, num_stages):
  if plgpu is None:  # pragma: no cover
    return None
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _dot(a, b):
  return plgpu.dot(a, b)


def _mask(s, qs, ks):
  return jnp.where(qs[:, None] == ks[None, :], s, MASK_VALUE)


def _pos_mask(s, qp, kp):
  """Key j visible to query i only where kv_pos[j] <= q_pos[i]."""
  return jnp.where(kp[None, :] <= qp[:, None], s, MASK_VALUE)


# ----------------------------------------------------------------------------- forward
def _fwd_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, qp_ref, kp_ref, o_ref, lse_ref, *,
                sm_scale, block_k):
  kv_len = k_ref.shape[0]
  q = q_ref[...]
  qs = None if qs_ref is None else qs_ref[...]
  qp = None if qp_ref is None else qp_ref[...]
  bq, dp = q.shape
  c = sm_scale * _LOG2E  # exp(x) = exp2(x log2 e)

  def body(i, carry):
    acc, m, l = carry
    sl = pl.ds(i * block_k, block_k)
    k = k_ref[sl, :]
    s = _dot(q, k.T) * c
    if qs is not None:
      s = _mask(s, qs, ks_ref[sl])
    if qp is not None:
      s = _pos_mask(s, qp, kp_ref[sl])
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    corr = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l = l * corr + jnp.sum(p, axis=-1)
    v = v_ref[sl, :]
    acc = acc * corr[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, l

  init = (jnp.zeros((bq, dp), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(0, kv_len // block_k, body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)  # base-2 log-sum-exp of the scaled logits


def _forward(q, k, v, qs, ks, qp, kp, cfg: "_Cfg"):
  b, lq, h, dp = q.shape
  lk = k.shape[1]
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  masked = qs is not None
  pos = qp is not None
  in_specs = [
      pl.BlockSpec((None, bq, None, dp), lambda i, j, n: (j, i, n, 0)),
      pl.BlockSpec((None, lk, None, dp), lambda i, j, n: (j, 0, n, 0)),
      pl.BlockSpec((None, lk, None, dp), lambda i, j, n: (j, 0, n, 0)),
      pl.BlockSpec((None, bq), lambda i, j, n: (j, i)) if masked else None,
      pl.BlockSpec((None, lk), lambda i, j, n: (j, 0)) if masked else None,
      pl.BlockSpec((None, bq), lambda i, j, n: (j, i)) if pos else None,
      pl.BlockSpec((None, lk), lambda i, j, n: (j, 0)) if pos else None,
  ]
  out_specs = [
      pl.BlockSpec((None, bq, None, dp), lambda i, j, n: (j, i, n, 0)),
      pl.BlockSpec((None, None, bq), lambda i, j, n: (j, n, i)),
  ]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((b, h, lq), jnp.float32)]
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, sm_scale=cfg.sm_scale, block_k=bk),
      grid=(lq // bq, b, h), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=_params(cfg.num_warps, cfg.blocks.num_stages),
      interpret=cfg.interpret, name="mmjax_flash_fwd",
  )(q, k, v, qs, ks, qp, kp)
  return out, lse


# ----------------------------------------------------------------------------- backward
def _dkv_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, qp_ref, kp_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, *, sm_scale, block_q):
  q_len = q_ref.shape[0]
  k = k_ref[...]
  v = v_ref[...]
  ks = None if ks_ref is None else ks_ref[...]
  kp = None if kp_ref is None else kp_ref[...]
  c = sm_scale * _LOG2E

  def body(j, carry):
    dk, dv = carry
    sl = pl.ds(j * block_q, block_q)
    q = q_ref[sl, :]
    s = _dot(q, k.T) * c
    if ks is not None:
      s = _mask(s, qs_ref[sl], ks)
    if kp is not None:
      s = _pos_mask(s, qp_ref[sl], kp)
    p = jnp.exp2(s - lse_ref[sl][:, None])          # [bq, bk] softmax probabilities
    do = do_ref[sl, :]
    dv = dv + _dot(p.astype(do.dtype).T, do)
    dp = _dot(do, v.T) - delta_ref[sl][:, None]
    ds = p * dp * sm_scale
    dk = dk + _dot(ds.astype(q.dtype).T, q)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, q_len // block_q, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, qp_ref, kp_ref, do_ref, lse_ref, delta_ref,
               dq_ref, *, sm_scale, block_k):
  kv_len = k_ref.shape[0]
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...]
  delta = delta_ref[...]
  qs = None if qs_ref is None else qs_ref[...]
  qp = None if qp_ref is None else qp_ref[...]
  c = sm_scale * _LOG2E

  def body(i, dq):
    sl = pl.ds(i * block_k, block_k)
    k = k_ref[sl, :]
    v = v_ref[sl, :]
    s = _dot(q, k.T) * c
    if qs is not None:
      s = _mask(s, qs, ks_ref[sl])
    if qp is not None:
      s = _pos_mask(s, qp, kp_ref[sl])
    p = jnp.exp2(s - lse[:, None])
    dp = _dot(do, v.T) - delta[:, None]
    ds = p * dp * sm_scale
    return dq + _dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, kv_len // block_k, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _backward(q, k, v, qs, ks, qp, kp, out, lse, do, cfg: "_Cfg"):
  b, lq, h, dp = q.shape
  lk = k.shape[1]
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  masked = qs is not None
  pos = qp is not None
  # delta_i = sum_d o_id * do_id  (the softmax-gradient correction), [B, H, Lq] f32.
  delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
  params = _params(cfg.num_warps, cfg.blocks.num_stages)

  full_q = pl.BlockSpec((None, lq, None, dp), lambda i, j, n: (i, 0, j, 0))
  blk_k = pl.BlockSpec((None, bk, None, dp), lambda i, j, n: (i, n, j, 0))
  full_row = pl.BlockSpec((None, None, lq), lambda i, j, n: (i, j, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, sm_scale=cfg.sm_scale, block_q=bq),
      grid=(b, h, lk // bk),
      in_specs=[full_q, blk_k, blk_k,
                pl.BlockSpec((None, lq), lambda i, j, n: (i, 0)) if masked else None,
                pl.BlockSpec((None, bk), lambda i, j, n: (i, n)) if masked else None,
                pl.BlockSpec((None, lq), lambda i, j, n: (i, 0)) if pos else None,
                pl.BlockSpec((None, bk), lambda i, j, n: (i, n)) if pos else None,
                full_q, full_row, full_row],
      out_specs=[blk_k, blk_k],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params, interpret=cfg.interpret, name="mmjax_flash_bwd_dkv",
  )(q, k, v, qs, ks, qp, kp, do, lse, delta)

  blk_q = pl.BlockSpec((None, bq, None, dp), lambda i, j, n: (i, n, j, 0))
  full_k = pl.BlockSpec((None, lk, None, dp), lambda i, j, n: (i, 0, j, 0))
  blk_row = pl.BlockSpec((None, None, bq), lambda i, j, n: (i, j, n))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, sm_scale=cfg.sm_scale, block_k=bk),
      grid=(b, h, lq // bq),
      in_specs=[blk_q, full_k, full_k,
                pl.BlockSpec((None, bq), lambda i, j, n: (i, n)) if masked else None,
                pl.BlockSpec((None, lk), lambda i, j, n: (i, 0)) if masked else None,
                pl.BlockSpec((None, bq), lambda i, j, n: (i, n)) if pos else None,
                pl.BlockSpec((None, lk), lambda i, j, n: (i, 0)) if pos else None,
                blk_q, blk_row, blk_row],
      out_specs=blk_q,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params, interpret=cfg.interpret, name="mmjax_flash_bwd_dq",
  )(q, k, v, qs, ks, qp, kp, do, lse, delta)
  return dq, dk, dv


# ----------------------------------------------------------------------------- custom_vjp
@dataclasses.dataclass(frozen=True)
class _Cfg:
  sm_scale: float
  blocks: BlockSizes
  num_warps: int
  interpret: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash(q, k, v, qs, ks, qp, kp, cfg):
  return _forward(q, k, v, qs, ks, qp, kp, cfg)[0]


def _flash_fwd(q, k, v, qs, ks, qp, kp, cfg):
  out, lse = _forward(q, k, v, qs, ks, qp, kp, cfg)
  return out, (q, k, v, qs, ks, qp, kp, out, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, qs, ks, qp, kp, out, lse = res
  dq, dk, dv = _backward(q, k, v, qs, ks, qp, kp, out, lse, do, cfg)
  return dq, dk, dv, None, None, None, None  # segment ids and positions: integer, no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad(x, axis, length, value=0):
  extra = length - x.shape[axis]
  if extra == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, extra)
  return jnp.pad(x, pad, constant_values=value)


def flash_attention(q, k, v, *, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                    q_positions=None, kv_positions=None,
                    block_sizes: Optional[BlockSizes] = None, interpret: bool = False,
                    sm_scale: Optional[float] = None):
  """softmax(q k^T / sqrt(D) masked) v with the Pallas GPU kernels; differentiable in q, k, v.

  q [B, Nq, H, D], k/v [B, Nk, H, D]; kv_mask [B, Nk] bool; segment ids [B, Nq] / [B, Nk] int
  (used when both are given); positions q_positions [B, Nq] / kv_positions [B, Nk] int (both or
  neither): key j is visible to query i only where kv_positions[b, j] <= q_positions[b, i]
  (causal, prefix-LM, decoding against a cache). Returns [B, Nq, H, D] in q's dtype.
  """
  b, nq, h, d = q.shape
  nk = k.shape[1]
  if k.shape != (b, nk, h, d) or v.shape != k.shape:
    raise ValueError(f"pallas_gpu attention: q {q.shape}, k {k.shape}, v {v.shape} must be "
                     "[B, N, H, D] with equal B, H, D")
  if (q_positions is None) != (kv_positions is None):
    raise ValueError("pallas_gpu attention: q_positions and kv_positions go together "
                     "(give both or neither)")
  dp = max(16, _next_pow2(d))
  if dp > 256:
    raise ValueError(f"pallas_gpu attention supports head_dim <= 256, got {d}")
  blocks = block_sizes or _env_blocks() or BlockSizes.for_head_dim(dp, jnp.dtype(q.dtype).itemsize)
  # Blocks no larger than the (power-of-two rounded) lengths, so short inputs are not padded far.
  cap_q, cap_k = max(16, _next_pow2(nq)), max(16, _next_pow2(nk))
  blocks = dataclasses.replace(
      blocks, block_q=min(blocks.block_q, cap_q), block_q_bwd=min(blocks.block_q_bwd, cap_q),
      block_k=min(blocks.block_k, cap_k), block_k_bwd=min(blocks.block_k_bwd, cap_k))
  lq = _round_up(nq, max(blocks.block_q, blocks.block_q_bwd))
  lk = _round_up(nk, max(blocks.block_k, blocks.block_k_bwd))
  use_seg = q_segment_ids is not None and kv_segment_ids is not None
  masked = use_seg or kv_mask is not None or lk != nk
  qs = ks = None
  if masked:
    qs = (q_segment_ids.astype(jnp.int32) if use_seg else jnp.zeros((b, nq), jnp.int32))
    ks = (kv_segment_ids.astype(jnp.int32) if use_seg else jnp.zeros((b, nk), jnp.int32))
    if kv_mask is not None:
      ks = jnp.where(kv_mask.astype(bool), ks, KV_PAD_ID)
    qs = _pad(qs, 1, lq, Q_PAD_ID)
    ks = _pad(ks, 1, lk, KV_PAD_ID)
  qpos = kpos = None
  if q_positions is not None:
    qpos = jnp.broadcast_to(jnp.asarray(q_positions).astype(jnp.int32), (b, nq))
    kpos = jnp.broadcast_to(jnp.asarray(kv_positions).astype(jnp.int32), (b, nk))
    qpos = _pad(qpos, 1, lq, Q_PAD_POS)
    kpos = _pad(kpos, 1, lk, KV_PAD_POS)
  qp = _pad(_pad(q, 3, dp), 1, lq)
  kp = _pad(_pad(k, 3, dp), 1, lk)
  vp = _pad(_pad(v, 3, dp), 1, lk)
  num_warps = blocks.num_warps or (4 if dp <= 128 else 8)
  cfg = _Cfg(sm_scale=float(sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)),
             blocks=blocks, num_warps=num_warps, interpret=bool(interpret))
  out = _flash(qp, kp, vp, qs, ks, qpos, kpos, cfg)
  return out[:, :nq, :, :d]


def supported(q, k) -> bool:
  """Shapes this kernel handles (head_dim <= 256); any dtype, any lengths (padded)."""
  return plgpu is not None and q.shape[-1] <= 256 and q.shape[-1] == k.shape[-1]
