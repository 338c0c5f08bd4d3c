"""pallas_gpu flash attention with per-token positions (interpret mode on CPU).

Key j is visible to query i only where kv_positions[b, j] <= q_positions[b, i], on top of key
padding and segment ids. Checked against a dense jnp softmax (forward, dq, dk, dv through
jax.grad of a random linear functional of the output) for causal, prefix-LM and decoding
positions; positions=None must leave the kernels exactly as before.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from mmjax import kernels
from mmjax.kernels import pallas_gpu

TOL = dict(rtol=1e-5, atol=1e-5)
SMALL = pallas_gpu.BlockSizes(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)


def _qkv(b, nq, nk, h=2, d=16, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(ks[0], (b, nq, h, d))
  k = jax.random.normal(ks[1], (b, nk, h, d))
  v = jax.random.normal(ks[2], (b, nk, h, d))
  w = jax.random.normal(ks[3], (b, nq, h, d))  # cotangent of the linear functional
  return q, k, v, w


def _reference(q, k, v, *, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
               q_positions=None, kv_positions=None):
  """Dense softmax(q k^T / sqrt(D) masked) v, f32."""
  b, nq, _, d = q.shape
  nk = k.shape[1]
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(d)
  vis = jnp.ones((b, nq, nk), bool)
  if kv_mask is not None:
    vis &= kv_mask[:, None, :]
  if q_segment_ids is not None:
    vis &= q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  if q_positions is not None:
    vis &= kv_positions[:, None, :] <= q_positions[:, :, None]
  if not isinstance(vis, jax.core.Tracer):
    assert bool(jnp.all(jnp.any(vis, -1))), "every query row needs a visible key in these tests"
  s = jnp.where(vis[:, None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v, precision="highest")


def _out_and_grads(fn, q, k, v, w):
  """fn's output and d(sum(out * w))/d(q, k, v), in one jitted forward + backward."""
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out * w), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


def _check(q, k, v, w, kw, blocks=None):
  f = lambda q, k, v: pallas_gpu.flash_attention(q, k, v, interpret=True, block_sizes=blocks,
                                                 **kw)
  r = lambda q, k, v: _reference(q, k, v, **kw)
  (out, g), (ref, gr) = _out_and_grads(f, q, k, v, w), _out_and_grads(r, q, k, v, w)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), err_msg="forward", **TOL)
  for name, a, e in zip("qkv", g, gr):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), err_msg=f"d{name}", **TOL)


def _prefix_positions(n, prefix_lens):
  """Prefix tokens at position 0, suffix tokens at 1, 2, ... (per row)."""
  i = np.arange(n)[None]
  return jnp.asarray(np.maximum(0, i - np.asarray(prefix_lens)[:, None] + 1), jnp.int32)


# ----------------------------------------------------------------------------- (a) causal
@pytest.mark.parametrize("n,d,blocks", [
    (37, 16, None),    # one 64-block, query rows and keys padded 37 -> 64
    (37, 32, SMALL),   # 16-blocks: several q / kv blocks, last ones partly padding
])
def test_causal_positions_match_dense(n, d, blocks):
  q, k, v, w = _qkv(2, n, n, d=d)
  pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (2, n))
  _check(q, k, v, w, dict(q_positions=pos, kv_positions=pos), blocks)


# ----------------------------------------------------------------------------- (b) prefix-LM
@pytest.mark.parametrize("segments,blocks", [(False, None), (True, SMALL)])
def test_prefix_lm_positions_with_key_padding(segments, blocks):
  n = 40
  q, k, v, w = _qkv(2, n, n, d=32, seed=1)
  pos = _prefix_positions(n, [5, 17])          # a different prefix length per row
  kw = dict(q_positions=pos, kv_positions=pos,
            kv_mask=jnp.arange(n)[None] < jnp.array([[40], [31]]))  # row 1: last 9 keys padding
  if segments:  # two packed examples per row (same ids for q and kv: self-attention)
    seg = jnp.asarray(np.repeat((np.arange(n) >= 28)[None].astype(np.int32), 2, 0))
    kw.update(q_segment_ids=seg, kv_segment_ids=seg)
  _check(q, k, v, w, kw, blocks)


# ----------------------------------------------------------------------------- (c) decoding
@pytest.mark.parametrize("blocks", [None, SMALL])
def test_single_query_against_kv_cache(blocks):
  nk = 33
  q, k, v, w = _qkv(2, 1, nk, d=16, seed=2)
  slots = np.stack([np.arange(nk), np.roll(np.arange(nk), 7)])  # row 1: a rolling cache
  kw = dict(q_positions=jnp.array([[20], [30]], jnp.int32),
            kv_positions=jnp.asarray(slots, jnp.int32),
            # a slot marked invalid (kv_mask False) stays masked even at a visible position
            kv_mask=jnp.arange(nk)[None] != jnp.array([[3], [10]]))
  _check(q, k, v, w, kw, blocks)


# ----------------------------------------------------------------------------- no positions
def _pallas_calls(fn, *args):
  """Operand counts of the pallas_calls in fn's jaxpr (nested ones, e.g. under custom_vjp)."""
  found = []

  def walk(jaxpr):
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # ClosedJaxpr -> Jaxpr
    for e in jaxpr.eqns:
      if e.primitive.name == "pallas_call":
        found.append(len(e.invars))
        continue
      for p in e.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else (p,)):
          if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args))
  return found


def test_positions_none_is_unchanged():
  q, k, v, _ = _qkv(2, 30, 45, d=16, seed=3)
  kw = dict(kv_mask=jnp.arange(45)[None] < jnp.array([[45], [20]]),
            q_segment_ids=jnp.asarray(np.repeat((np.arange(30) >= 12)[None], 2, 0), jnp.int32),
            kv_segment_ids=jnp.asarray(np.repeat((np.arange(45) >= 18)[None], 2, 0), jnp.int32))
  plain = lambda q, k, v: pallas_gpu.flash_attention(q, k, v, interpret=True, **kw)
  none = lambda q, k, v: pallas_gpu.flash_attention(q, k, v, interpret=True, q_positions=None,
                                                    kv_positions=None, **kw)
  out = plain(q, k, v)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(none(q, k, v)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(_reference(q, k, v, **kw)), **TOL)
  # Same kernels as before: q, k, v + the two segment-id arrays, no position inputs ...
  assert _pallas_calls(none, q, k, v) == [5]
  pos = jnp.zeros((2, 30), jnp.int32), jnp.zeros((2, 45), jnp.int32)
  with_pos = lambda q, k, v: pallas_gpu.flash_attention(
      q, k, v, interpret=True, q_positions=pos[0], kv_positions=pos[1], **kw)
  assert _pallas_calls(with_pos, q, k, v) == [7]  # ... which positions add
  # ... and unmasked inputs at block multiples still run with no mask inputs at all.
  q2, k2, v2, _ = _qkv(1, 16, 16)
  assert _pallas_calls(lambda *x: pallas_gpu.flash_attention(*x, interpret=True), q2, k2, v2) \
      == [3]


def test_positions_go_together():
  q, k, v, _ = _qkv(1, 8, 8)
  with pytest.raises(ValueError, match="give both or neither"):
    pallas_gpu.flash_attention(q, k, v, interpret=True, q_positions=jnp.zeros((1, 8), int))


# ----------------------------------------------------------------------------- dispatch
def test_pallas_attention_passes_positions(monkeypatch):
  monkeypatch.setenv("MMJAX_PALLAS_INTERPRET", "1")
  n = 16  # a block multiple with no kv_mask: positions are the only mask inputs
  q, k, v, _ = _qkv(2, n, n, seed=4)
  pos = jnp.arange(n, dtype=jnp.int32)  # [N] broadcasts over the batch
  out = kernels.pallas_attention("pallas_gpu", q, k, v, q_positions=pos, kv_positions=pos)
  ref = _reference(q, k, v, q_positions=jnp.broadcast_to(pos, (2, n)),
                   kv_positions=jnp.broadcast_to(pos, (2, n)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **TOL)
  with pytest.raises(ValueError, match="attention.impl=pallas_tpu takes static masks only"):
    kernels.pallas_attention("pallas_tpu", q, k, v, q_positions=pos, kv_positions=pos)


def test_positions_split_over_mesh_batch(monkeypatch):
  """Under a mesh the positions are split over the batch axes like segment ids."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (simulated) devices; see tests/conftest.py")
  monkeypatch.setenv("MMJAX_PALLAS_INTERPRET", "1")
  mesh = jax.make_mesh((4, 1, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  n = 24
  q, k, v, _ = _qkv(4, n, n, seed=5)
  pos = _prefix_positions(n, [1, 4, 9, 24])  # 1: causal ... 24: all prefix (bidirectional)
  kv_mask = jnp.arange(n)[None] < jnp.array([[24], [20], [24], [13]])
  seen = []
  real = pallas_gpu.flash_attention

  def spy(q, k, v, **kwargs):
    seen.append((q.shape, kwargs["q_positions"].shape, kwargs["kv_positions"].shape))
    return real(q, k, v, **kwargs)

  monkeypatch.setattr(pallas_gpu, "flash_attention", spy)
  f = jax.jit(lambda q, k, v: kernels.pallas_attention(
      "pallas_gpu", q, k, v, kv_mask=kv_mask, q_positions=pos, kv_positions=pos, mesh=mesh))
  out = f(q, k, v)
  assert seen and seen[0] == ((1, n, 1, 16), (1, n), (1, n))
  ref = _reference(q, k, v, kv_mask=kv_mask, q_positions=pos, kv_positions=pos)
  chex.assert_trees_all_close(out, ref, **TOL)
