"""Multi-head attention and the one kernel-dispatch function.

Layout everywhere: q [B, Nq, H, D], k and v [B, Nk, H, D] (jax.nn.dot_product_attention's BTNH).
Masks are expressed structurally, so every backend can take them on its fast path:

  kv_mask          [B, Nk] bool   padding of the keys (False = padding, never attended to)
  q_segment_ids    [B, Nq] int    optional; a query attends only to keys of the same segment
  kv_segment_ids   [B, Nk] int    (packed sequences, modality blocks)
  causal           bool           query i attends only to keys j <= i (autoregressive text)
  q_positions      [B, Nq] int    optional, with kv_positions [B, Nk]: key j is visible to
  kv_positions                    query i only if kv_pos[j] <= q_pos[i]. One rule for causal
                                  text (positions 0..N-1), prefix-LM (every prefix token at 0,
                                  suffix tokens 1, 2, ...) and decoding against a kv cache.

Computed: out[b,q,h] = sum_k softmax_k(q.k / sqrt(D) + bias) v[b,k,h], bias = -inf where masked.
A query with no valid key at all (an absent modality) gets a defined output of zeros, never NaN.

`attention_kernel` is the single place where a backend is chosen (`attention.impl`):
  xla        jax.nn.dot_product_attention, XLA's fused path (the reference)
  chunked    blockwise online softmax over query and key chunks (never materializes Nq x Nk;
             backward recomputes per query chunk, so memory is O(N) in both passes)
  cudnn      cuDNN flash attention (GPU, bf16/fp16, head dim % 8 == 0 and <= 128/256)
  pallas_gpu, pallas_tpu   Pallas flash / splash kernels (see mmjax/kernels when present)
  auto       picks by platform, dtype and shapes, and logs its choice once
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.config_lib import CHUNK_SIZE
from mmjax.kernels.common import KV_PAD_ID, MASK_VALUE, Q_PAD_ID

IMPLS = ("auto", "xla", "chunked", "cudnn", "pallas_gpu", "pallas_tpu")
_logged_choices: set = set()
# The platform `auto` resolves for: the devices the step is compiled for (a TPU pod slice
# compiled from a CPU host is "tpu"), set by target_platform(); unset = jax.default_backend().
_TARGET_PLATFORM: contextvars.ContextVar = contextvars.ContextVar("mmjax_attention_platform",
                                                                  default=None)


@contextlib.contextmanager
def target_platform(platform: Optional[str]):
  """Within the block, impl='auto' picks backends for `platform` ('cpu', 'gpu', 'tpu'), not for
  the host's default backend. train_lib enters it with the mesh's device platform."""
  token = _TARGET_PLATFORM.set(platform)
  try:
    yield
  finally:
    _TARGET_PLATFORM.reset(token)


def auto_choices():
  """The (platform, backend, dtype, head_dim) choices `auto` has made in this process."""
  return sorted(_logged_choices)


def causal_mask(nq: int, nk: int):
  """[1, 1, Nq, Nk] bool: key j is visible to query i when j <= i."""
  return (jnp.arange(nq)[:, None] >= jnp.arange(nk)[None, :])[None, None]


def make_mask(kv_mask, q_segment_ids=None, kv_segment_ids=None, nq: Optional[int] = None,
              causal: bool = False, nk: Optional[int] = None, q_positions=None,
              kv_positions=None):
  """Dense boolean mask [B, 1, Nq, Nk] from the structural description (None if no masking)."""
  mask = None
  if kv_mask is not None:
    mask = kv_mask[:, None, None, :]
  if q_segment_ids is not None and kv_segment_ids is not None:
    seg = q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]
    mask = seg if mask is None else mask & seg
  if q_positions is not None and kv_positions is not None:
    pos = kv_positions[:, None, None, :] <= q_positions[:, None, :, None]
    mask = pos if mask is None else mask & pos
  if causal:
    nk = nk if nk is not None else mask.shape[-1]
    tri = causal_mask(nq, nk)
    mask = tri if mask is None else mask & tri
  if mask is not None and nq is not None and mask.shape[2] == 1:
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (nq,) + mask.shape[3:])
  return mask


def _rows_with_a_key(q, kv_mask, q_segment_ids, kv_segment_ids, causal=False,
                     q_positions=None, kv_positions=None):
  """[B, Nq] bool: does this query have at least one valid key?"""
  b, nq = q.shape[:2]
  if q_positions is not None and kv_positions is not None:
    if q_segment_ids is None or kv_segment_ids is None:  # the smallest valid key position
      valid = (jnp.ones(kv_positions.shape, bool) if kv_mask is None else kv_mask)
      big = jnp.iinfo(jnp.int32).max
      first = jnp.min(jnp.where(valid, kv_positions.astype(jnp.int32), big), axis=-1)
      return first[:, None] <= q_positions.astype(jnp.int32)
    m = make_mask(kv_mask, q_segment_ids, kv_segment_ids, q_positions=q_positions,
                  kv_positions=kv_positions)[:, 0]
    return jnp.any(m, axis=-1)
  if kv_mask is None and q_segment_ids is None:
    return None
  if q_segment_ids is None or kv_segment_ids is None:
    if causal:  # a valid key at or before the query's position
      return jnp.cumsum(kv_mask[:, :nq].astype(jnp.int32), axis=-1) > 0
    any_valid = jnp.any(kv_mask, axis=-1)  # [B]
    return jnp.broadcast_to(any_valid[:, None], (b, nq))
  m = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  if kv_mask is not None:
    m = m & kv_mask[:, None, :]
  if causal:
    m = m & causal_mask(nq, m.shape[-1])[0]
  return jnp.any(m, axis=-1)


def xla_attention(q, k, v, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                  return_weights=False, causal=False, q_positions=None, kv_positions=None):
  """Reference path. With return_weights, also returns softmax weights [B, H, Nq, Nk]."""
  mask = make_mask(kv_mask, q_segment_ids, kv_segment_ids, nq=q.shape[1], causal=causal,
                   nk=k.shape[1], q_positions=q_positions, kv_positions=kv_positions)
  if not return_weights:
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    return out, None
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return out, weights


def _pad_to(x, axis, multiple, value=0):
  n = x.shape[axis]
  extra = (-n) % multiple
  if extra == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, extra)
  return jnp.pad(x, pad, constant_values=value)


def _chunks(x, c):
  """[B, N, ...] -> [N / c, B, c, ...] (chunk-major, for scanning)."""
  b, n = x.shape[:2]
  return x.reshape((b, n // c, c) + x.shape[2:]).swapaxes(0, 1)


def _unchunk(x, like):
  return x.swapaxes(0, 1).reshape(like.shape).astype(like.dtype)


def _chunk_scores(qb, kb, qsb, ksb, qpb, kpb, scale):
  """Scaled scores [B, H, qc, kc] (f32) and their validity mask (same segment, and key
  position <= query position; positions [B, c] are all 0 unless causal / positioned)."""
  s = jnp.einsum("bqhd,bkhd->bhqk", qb, kb, preferred_element_type=jnp.float32) * scale
  valid = ((qsb[:, None, :, None] == ksb[:, None, None, :])
           & (qpb[:, None, :, None] >= kpb[:, None, None, :]))
  return s, valid


def _chunked_forward(q, k, v, qs, ks, qp, kp, qc, kc):
  """Online softmax over kv chunks inside a scan over q chunks; returns out and lse chunks."""
  b, _, h, d = q.shape
  scale = 1.0 / math.sqrt(d)
  kv = (_chunks(k, kc), _chunks(v, kc), _chunks(ks, kc), _chunks(kp, kc))

  def q_step(_, xs):
    qb, qsb, qpb = xs

    def kv_step(carry, ys):
      acc, m, l = carry  # [B, H, qc, D] f32, [B, H, qc], [B, H, qc]
      kb, vb, ksb, kpb = ys
      s, valid = _chunk_scores(qb, kb, qsb, ksb, qpb, kpb, scale)
      s = jnp.where(valid, s, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(s - m_safe[..., None])
      corr = jnp.exp(m - m_safe)  # m = -inf (nothing seen yet) -> 0
      l_new = l * corr + jnp.sum(p, axis=-1)
      acc_new = acc * corr[..., None] + jnp.einsum(
          "bhqk,bkhd->bhqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
      return (acc_new, m_new, l_new), None

    qcn = qb.shape[1]
    init = (jnp.zeros((b, h, qcn, d), jnp.float32),
            jnp.full((b, h, qcn), -jnp.inf, jnp.float32), jnp.zeros((b, h, qcn), jnp.float32))
    (acc, m, l), _ = jax.lax.scan(kv_step, init, kv)
    has = l > 0
    out = acc / jnp.where(has, l, 1.0)[..., None]  # rows with no valid key -> 0
    # log-sum-exp of the row; +inf for rows without keys, so exp(s - lse) = 0 in the backward.
    lse = jnp.where(has, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(jnp.where(has, l, 1.0)),
                    jnp.inf)
    return None, (out.transpose(0, 2, 1, 3).astype(q.dtype), lse)

  _, (out, lse) = jax.lax.scan(q_step, None, (_chunks(q, qc), _chunks(qs, qc), _chunks(qp, qc)))
  return _unchunk(out, q), lse  # lse: [Nq / qc, B, H, qc]


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _chunked_flash(q, k, v, qs, ks, qp, kp, qc, kc):
  return _chunked_forward(q, k, v, qs, ks, qp, kp, qc, kc)[0]


def _chunked_flash_fwd(q, k, v, qs, ks, qp, kp, qc, kc):
  out, lse = _chunked_forward(q, k, v, qs, ks, qp, kp, qc, kc)
  return out, (q, k, v, qs, ks, qp, kp, out, lse)


def _chunked_flash_bwd(qc, kc, res, do):
  """FlashAttention-2 backward: per (q chunk, kv chunk) recompute p = exp(s - lse) and
  accumulate dq (carried over kv chunks) and dk, dv (carried over q chunks)."""
  q, k, v, qs, ks, qp, kp, out, lse = res
  scale = 1.0 / math.sqrt(q.shape[-1])
  delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
  delta = delta.reshape(delta.shape[0], delta.shape[1], -1, qc).transpose(2, 0, 1, 3)
  kv = (_chunks(k, kc), _chunks(v, kc), _chunks(ks, kc), _chunks(kp, kc))

  def q_step(dkv, xs):
    qb, qsb, qpb, dob, lseb, deltab = xs

    def kv_step(dq, ys):
      kb, vb, ksb, kpb = ys
      s, valid = _chunk_scores(qb, kb, qsb, ksb, qpb, kpb, scale)
      p = jnp.where(valid, jnp.exp(s - lseb[..., None]), 0.0)
      dv = jnp.einsum("bhqk,bqhd->bkhd", p.astype(dob.dtype), dob,
                      preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqhd,bkhd->bhqk", dob, vb, preferred_element_type=jnp.float32)
      ds = p * (dp - deltab[..., None]) * scale
      dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds.astype(kb.dtype), kb,
                           preferred_element_type=jnp.float32)
      dk = jnp.einsum("bhqk,bqhd->bkhd", ds.astype(qb.dtype), qb,
                      preferred_element_type=jnp.float32)
      return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(kv_step, jnp.zeros(qb.shape, jnp.float32), kv)
    return (dkv[0] + dk, dkv[1] + dv), dq

  zeros = jnp.zeros(kv[0].shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(q_step, (zeros, zeros),
                              (_chunks(q, qc), _chunks(qs, qc), _chunks(qp, qc),
                               _chunks(do, qc), lse, delta))
  return _unchunk(dq, q), _unchunk(dk, k), _unchunk(dv, v), None, None, None, None


_chunked_flash.defvjp(_chunked_flash_fwd, _chunked_flash_bwd)


def chunked_attention(q, k, v, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                      q_chunk: int = CHUNK_SIZE, kv_chunk: int = CHUNK_SIZE, causal: bool = False,
                      q_positions=None, kv_positions=None):
  """Memory-efficient attention: online softmax over kv chunks inside a scan over q chunks.

  Peak memory is O(q_chunk * kv_chunk) per (batch, head) for the scores, O(N * D) overall.
  The backward is a custom_vjp in FlashAttention-2 form (saves only out and the row
  log-sum-exp, recomputes each score chunk once): on the 2-core CPU it measured 10-20% faster
  at 8k-16k tokens and 2-3x less temp memory than differentiating a rematerialized scan.
  Masks become segment ids: masked keys get a sentinel id no query has (user ids must be
  > int32 min + 1).
  """
  b, nq, _, _ = q.shape
  nk = k.shape[1]
  qc, kc = min(q_chunk, nq), min(kv_chunk, nk)
  use_seg = q_segment_ids is not None and kv_segment_ids is not None
  qs = q_segment_ids.astype(jnp.int32) if use_seg else jnp.zeros((b, nq), jnp.int32)
  ks = kv_segment_ids.astype(jnp.int32) if use_seg else jnp.zeros((b, nk), jnp.int32)
  if kv_mask is not None:
    ks = jnp.where(kv_mask, ks, KV_PAD_ID)
  if q_positions is not None and kv_positions is not None:
    qpos, kpos = q_positions.astype(jnp.int32), kv_positions.astype(jnp.int32)
  elif causal:
    qpos = jnp.broadcast_to(jnp.arange(nq, dtype=jnp.int32), (b, nq))
    kpos = jnp.broadcast_to(jnp.arange(nk, dtype=jnp.int32), (b, nk))
  else:
    qpos, kpos = jnp.zeros((b, nq), jnp.int32), jnp.zeros((b, nk), jnp.int32)
  qp, qsp = _pad_to(q, 1, qc), _pad_to(qs, 1, qc, Q_PAD_ID)
  kp, vp, ksp = _pad_to(k, 1, kc), _pad_to(v, 1, kc), _pad_to(ks, 1, kc, KV_PAD_ID)
  qpp, kpp = _pad_to(qpos, 1, qc), _pad_to(kpos, 1, kc)  # padded rows / keys: masked by ids
  return _chunked_flash(qp, kp, vp, qsp, ksp, qpp, kpp, qc, kc)[:, :nq]


def cudnn_attention(q, k, v, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                    causal=False, q_positions=None, kv_positions=None):
  """cuDNN flash attention through jax.nn.dot_product_attention (GPU only)."""
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention.impl=cudnn needs bf16/fp16 inputs, got {q.dtype}; "
                     "set model.dtype=bfloat16 or attention.impl=auto")
  return _even_lengths_attention(
      functools.partial(jax.nn.dot_product_attention, implementation="cudnn"), q, k, v,
      kv_mask, q_segment_ids, kv_segment_ids, causal, q_positions, kv_positions)


def _even_lengths_attention(attend, q, k, v, kv_mask, q_segment_ids, kv_segment_ids,
                            causal=False, q_positions=None, kv_positions=None):
  """cuDNN trains with a mask only on even sequence lengths: pad Nq and Nk by one where odd
  (the extra key masked out, the extra query dropped) and pass a full [B, 1, Nq, Nk] mask."""
  nq, nk = q.shape[1], k.shape[1]
  if kv_mask is None:
    kv_mask = jnp.ones(k.shape[:2], bool)
  q, k, v = _pad_to(q, 1, 2), _pad_to(k, 1, 2), _pad_to(v, 1, 2)
  kv_mask = _pad_to(kv_mask, 1, 2, False)
  if q_segment_ids is not None:
    q_segment_ids = _pad_to(q_segment_ids, 1, 2, -1)
    kv_segment_ids = _pad_to(kv_segment_ids, 1, 2, -2)
  if q_positions is not None:  # the extra key is masked by kv_mask; the extra query dropped
    q_positions, kv_positions = _pad_to(q_positions, 1, 2), _pad_to(kv_positions, 1, 2)
  mask = make_mask(kv_mask, q_segment_ids, kv_segment_ids, nq=q.shape[1], causal=causal,
                   nk=k.shape[1], q_positions=q_positions, kv_positions=kv_positions)
  return attend(q, k, v, mask=mask)[:, :nq]


def _cudnn_ok(q, k) -> bool:
  d = q.shape[-1]
  max_d = 256 if _is_hopper() else 128
  return q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0 and d <= max_d


@functools.lru_cache(maxsize=None)
def _is_hopper() -> bool:
  try:
    kind = jax.devices()[0].device_kind.lower()
  except Exception:  # pragma: no cover
    return False
  return "h100" in kind or "h200" in kind or "h800" in kind or "gh200" in kind


_PALLAS_MIN_LEN = 256  # below this, padding to kernel blocks costs more than XLA's dense path


def _pallas_ok(choice: str, q, k) -> bool:
  try:
    from mmjax import kernels  # pylint: disable=import-outside-toplevel
    return kernels.supported(choice, q, k)
  except Exception:  # pragma: no cover - Pallas not importable in this jax
    return False


def choose_impl(impl: str, q, k, platform: Optional[str] = None, causal: bool = False,
                positioned: bool = False) -> str:
  """Resolve `auto` to a concrete backend (logged once per distinct choice).

  TPU: pallas_tpu (splash) when head_dim is 64 or a multiple of 128 and both lengths >= 256.
  GPU: cudnn when its constraints hold (bf16/fp16, head_dim % 8 == 0, <= 128, 256 on Hopper);
       else pallas_gpu (any dtype, head_dim <= 256) when both lengths >= 256.
  Otherwise (CPU, or short sequences): chunked when Nq * Nk >= 4096^2, else xla.
  Causal or positioned attention (q/kv positions: prefix-LM, decoding) never resolves to the
  Pallas kernels: splash takes static masks only, and short decoder steps gain nothing there.
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown attention.impl={impl!r}; choose one of {', '.join(IMPLS)}")
  if impl != "auto":
    return impl
  platform = platform or _TARGET_PLATFORM.get() or jax.default_backend()
  nq, nk = q.shape[1], k.shape[1]
  long_enough = min(nq, nk) >= _PALLAS_MIN_LEN
  if causal or positioned:
    long_enough = False
  if platform == "tpu" and long_enough and _pallas_ok("pallas_tpu", q, k):
    choice = "pallas_tpu"
  elif platform == "gpu" and _cudnn_ok(q, k):
    choice = "cudnn"
  elif platform == "gpu" and long_enough and _pallas_ok("pallas_gpu", q, k):
    choice = "pallas_gpu"
  elif nq * nk >= 4096 * 4096:
    choice = "chunked"  # dense scores would not fit comfortably; stay O(N) in memory
  else:
    choice = "xla"
  key = (platform, choice, str(q.dtype), q.shape[-1])
  if key not in _logged_choices:
    _logged_choices.add(key)
    logging.info("attention.impl=auto chose %s (platform=%s, dtype=%s, head_dim=%d, Nq=%d, "
                 "Nk=%d)", choice, platform, q.dtype, q.shape[-1], nq, nk)
  return choice


def attention_kernel(q, k, v, *, impl: str = "auto", kv_mask=None, q_segment_ids=None,
                     kv_segment_ids=None, return_weights: bool = False,
                     chunk_size: int = CHUNK_SIZE, causal: bool = False, q_positions=None,
                     kv_positions=None):
  """The one dispatch point. Returns (out [B, Nq, H, D], weights [B, H, Nq, Nk] or None)."""
  if (q_positions is None) != (kv_positions is None):
    raise ValueError("attention needs both q_positions and kv_positions, or neither")
  positioned = q_positions is not None
  if positioned and causal:
    raise ValueError("attention takes causal=True or q/kv positions, not both (positions "
                     "0..N-1 are the causal mask)")
  choice = "xla" if return_weights else choose_impl(impl, q, k, causal=causal,
                                                     positioned=positioned)
  kv_mask = None if kv_mask is None else kv_mask.astype(bool)
  masks = dict(kv_mask=kv_mask, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
  pos = dict(q_positions=q_positions, kv_positions=kv_positions)
  weights = None
  if choice == "xla":
    out, weights = xla_attention(q, k, v, return_weights=return_weights, causal=causal,
                                 **masks, **pos)
  elif choice == "chunked":
    out = chunked_attention(q, k, v, q_chunk=chunk_size, kv_chunk=chunk_size, causal=causal,
                            **masks, **pos)
  elif choice == "cudnn":
    out = cudnn_attention(q, k, v, causal=causal, **masks, **pos)
  else:
    if causal:  # the Pallas kernels see causality as positions 0..N-1
      b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
      pos = dict(q_positions=jnp.broadcast_to(jnp.arange(nq, dtype=jnp.int32), (b, nq)),
                 kv_positions=jnp.broadcast_to(jnp.arange(nk, dtype=jnp.int32), (b, nk)))
    from mmjax import kernels  # pylint: disable=import-outside-toplevel
    extra = {k_: v_ for k_, v_ in pos.items() if v_ is not None}
    out = kernels.pallas_attention(choice, q, k, v, **masks, **extra)
  rows = _rows_with_a_key(q, kv_mask, q_segment_ids, kv_segment_ids, causal, **pos)
  if rows is not None:  # a query with nothing to attend to outputs zeros, never NaN
    out = jnp.where(rows[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out, weights


def attention_core_flops(b: int, nq: int, nk: int, h: int, d: int) -> int:
  """Forward FLOPs of the attention core: QK^T and PV, 2 * 2 * B * H * Nq * Nk * D.

  The one closed form: MultiHeadAttention sows it (mmjax.summary sums it), and
  mmjax.bench.attention scales it by its forward+backward factor."""
  return 4 * b * h * nq * nk * d


class MultiHeadAttention(nn.Module):
  """MHSA(Q from x_q, K and V from x_kv): self-attention when x_kv is x_q, cross otherwise.

  x_q [B, Nq, E], x_kv [B, Nk, E] -> [B, Nq, E]. Parameters carry logical axes
  (embed, heads, kv). With `capture_weights`, the weights [B, H, Nq, Nk] are sown into the
  'intermediates' collection as 'attention_weights' (for inspection; forces the xla path).
  Its analytic attention-core FLOPs are sown into 'attn_flops' (summed by
  mmjax.summary.sown_attention_flops).

  Decoding: with `cache=(k [B, S, H, D], v [B, S, H, D], index)` the projections of the new
  tokens x_kv (n of them, at positions index..index+n-1) are written into the cache at
  `index`, the queries attend to every cached slot whose position is <= their own, and the
  call returns (out, (k', v', index + n)). Equal to the uncached causal pass (tested).
  """
  num_heads: int
  head_dim: int
  impl: str = "auto"
  chunk_size: int = CHUNK_SIZE
  capture_weights: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  key_bias: bool = False  # softmax ignores it (see below); imported checkpoints carry one

  @nn.compact
  def __call__(self, x_q, x_kv=None, *, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
               causal: bool = False, q_positions=None, kv_positions=None, cache=None):
    x_kv = x_q if x_kv is None else x_kv
    e, h, d = x_q.shape[-1], self.num_heads, self.head_dim
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))

    def project(name, x, bias=True):  # [B, N, E] x [E, H, D] -> [B, N, H, D]
      w = self.param(f"{name}_kernel", nn.with_logical_partitioning(init, ("embed", "heads", "kv")),
                     (e, h, d), self.param_dtype)
      x, w = nn.dtypes.promote_dtype(x, w, dtype=self.dtype)
      y = jnp.einsum("bne,ehd->bnhd", x, w)
      if not bias:
        return y
      b = self.param(f"{name}_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("heads", "kv")), (h, d), self.param_dtype)
      return y + b.astype(y.dtype)

    # No key bias by default: q.(k + b) shifts every logit of a query equally, so softmax
    # ignores it (its gradient is exactly zero; a parameter that only receives rounding noise).
    q = project("query", x_q)
    k = project("key", x_kv, bias=self.key_bias)
    v = project("value", x_kv)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))
    new_cache = None
    if cache is not None:
      k_cache, v_cache, index = cache
      n, slots = k.shape[1], k_cache.shape[1]
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
      new_cache = (k, v, index + n)
      b_ = q.shape[0]
      q_positions = jnp.broadcast_to(index + jnp.arange(n, dtype=jnp.int32), (b_, n))
      kv_positions = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (b_, slots))
      causal = False
    out, weights = attention_kernel(
        q, k, v, impl=self.impl, kv_mask=kv_mask, q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids, return_weights=self.capture_weights,
        chunk_size=self.chunk_size, causal=causal, q_positions=q_positions,
        kv_positions=kv_positions)
    if weights is not None:
      self.sow("intermediates", "attention_weights", weights)
    b, nq, _ = x_q.shape
    self.sow("attn_flops", "flops",
             jnp.asarray(attention_core_flops(b, nq, k.shape[1], self.num_heads, self.head_dim),
                         jnp.float32))
    w_out = self.param("out_kernel", nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2), ("heads", "kv", "embed")),
        (h, d, e), self.param_dtype)
    b_out = self.param("out_bias", nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed",)), (e,), self.param_dtype)
    out, w_out, b_out = nn.dtypes.promote_dtype(out, w_out, b_out, dtype=self.dtype)
    out = jnp.einsum("bnhd,hde->bne", out, w_out) + b_out
    return out if cache is None else (out, new_cache)
