"""The attention dispatch: chunked == xla (forward and gradient), masks, segments, NaN-safety."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import attention
from tests.helpers import grad

# Each call compiled as one program (an eager call would compile each of its ops alone).
kernel = jax.jit(attention.attention_kernel,
                 static_argnames=("impl", "return_weights", "chunk_size", "causal"))


def _qkv(b=2, nq=37, nk=53, h=3, d=8, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (b, nq, h, d))
  k = jax.random.normal(ks[1], (b, nk, h, d))
  v = jax.random.normal(ks[2], (b, nk, h, d))
  return q, k, v


def _kv_mask(b, nk, seed=1):
  lens = np.random.RandomState(seed).randint(1, nk, size=b)
  return jnp.arange(nk)[None] < jnp.asarray(lens)[:, None]


@pytest.mark.parametrize("nq,nk,chunk", [(37, 53, 16), (64, 64, 64), (5, 130, 32)])
def test_chunked_matches_xla_forward_and_grad(nq, nk, chunk):
  q, k, v = _qkv(nq=nq, nk=nk)
  mask = _kv_mask(2, nk)

  def loss(impl, q, k, v):
    out, _ = kernel(q, k, v, impl=impl, kv_mask=mask, chunk_size=chunk)
    return jnp.sum(jnp.sin(out))

  for arg in range(3):
    gx = grad(lambda *a: loss("xla", *a), argnums=arg)(q, k, v)
    gc = grad(lambda *a: loss("chunked", *a), argnums=arg)(q, k, v)
    chex.assert_trees_all_close(gc, gx, atol=1e-5, rtol=1e-5)
  ox, _ = kernel(q, k, v, impl="xla", kv_mask=mask)
  oc, _ = kernel(q, k, v, impl="chunked", kv_mask=mask, chunk_size=chunk)
  chex.assert_trees_all_close(oc, ox, atol=1e-5, rtol=1e-5)


def test_segment_ids_match_dense_block_mask():
  q, k, v = _qkv(nq=24, nk=24)
  seg = jnp.asarray(np.repeat([[0, 1, 2]], 8, axis=1).repeat(2, 0))
  oc, _ = kernel(q, k, v, impl="chunked", q_segment_ids=seg,
                                     kv_segment_ids=seg, chunk_size=8)
  ox, w = kernel(q, k, v, impl="xla", q_segment_ids=seg, kv_segment_ids=seg,
                                     return_weights=True)
  chex.assert_trees_all_close(oc, ox, atol=1e-5)
  # A query never puts weight on another segment's keys.
  cross = np.asarray(seg[:, None, :, None] != seg[:, None, None, :])
  assert float(jnp.max(jnp.where(cross, w, 0.0))) == 0.0
  # Each segment equals attention computed on that segment alone.
  o0, _ = kernel(q[:, 8:16], k[:, 8:16], v[:, 8:16], impl="xla")
  chex.assert_trees_all_close(ox[:, 8:16], o0, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_query_without_keys_is_zero_not_nan(impl):
  q, k, v = _qkv(nq=6, nk=9)
  mask = jnp.array([[False] * 9, [True] * 9])
  out, _ = kernel(q, k, v, impl=impl, kv_mask=mask, chunk_size=4)
  assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_array_equal(np.asarray(out[0]), 0.0)
  g = grad(lambda q: jnp.sum(kernel(
      q, k, v, impl=impl, kv_mask=mask, chunk_size=4)[0]))(q)
  assert bool(jnp.all(jnp.isfinite(g)))


def test_padding_keys_do_not_change_outputs():
  q, k, v = _qkv(nq=7, nk=11)
  full, _ = kernel(q, k, v, impl="xla")
  pad = lambda x: jnp.concatenate([x, 100 * jnp.ones_like(x[:, :5])], axis=1)
  mask = jnp.arange(16)[None].repeat(2, 0) < 11
  for impl in ("xla", "chunked"):
    out, _ = kernel(q, pad(k), pad(v), impl=impl, kv_mask=mask,
                                        chunk_size=4)
    chex.assert_trees_all_close(out, full, atol=1e-5)


def test_weights_are_a_distribution_over_valid_keys():
  q, k, v = _qkv(nq=5, nk=7)
  mask = _kv_mask(2, 7)
  _, w = kernel(q, k, v, kv_mask=mask, return_weights=True)
  chex.assert_shape(w, (2, 3, 5, 7))
  np.testing.assert_allclose(np.asarray(w.sum(-1)), 1.0, atol=1e-6)
  assert float(jnp.max(jnp.where(mask[:, None, None, :], 0.0, w))) == 0.0


def test_bf16_inputs():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
  for impl in ("xla", "chunked"):
    out, _ = kernel(q, k, v, impl=impl, chunk_size=16)
    assert out.dtype == jnp.bfloat16
  ref, _ = kernel(*(x.astype(jnp.float32) for x in (q, k, v)), impl="xla")
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=5e-2)


def test_auto_and_errors():
  q, k, _ = _qkv()
  assert attention.choose_impl("auto", q, k, platform="cpu") == "xla"
  big = jnp.zeros((1, 4096, 1, 8))
  assert attention.choose_impl("auto", big, big, platform="cpu") == "chunked"
  assert attention.choose_impl("auto", big.astype(jnp.bfloat16), big, platform="gpu") in (
      "cudnn",)
  with pytest.raises(ValueError, match="unknown attention.impl='flash'"):
    attention.choose_impl("flash", q, k)
  # `auto` resolves for the platform the step is compiled for, not the host's backend.
  tpu_len = jnp.zeros((1, 512, 2, 64))
  assert attention.choose_impl("auto", tpu_len, tpu_len) == "xla"
  with attention.target_platform("tpu"):
    assert attention.choose_impl("auto", tpu_len, tpu_len) == "pallas_tpu"
    with attention.target_platform("gpu"):
      assert attention.choose_impl("auto", tpu_len.astype(jnp.bfloat16), tpu_len) == "cudnn"
    assert attention.choose_impl("auto", tpu_len, tpu_len, platform="cpu") == "xla"
  assert attention.choose_impl("auto", tpu_len, tpu_len) == "xla"
  assert ("tpu", "pallas_tpu", "float32", 64) in attention.auto_choices()
  with pytest.raises(ValueError, match="bf16/fp16"):
    attention.cudnn_attention(q, k, k)


def test_chunked_memory_is_linear():
  """The compiled chunked forward+backward never allocates an Nq x Nk buffer."""
  def temp_bytes(impl, n, h=1, d=16):
    x = jax.ShapeDtypeStruct((1, n, h, d), jnp.float32)
    f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention.attention_kernel(
        q, k, v, impl=impl, chunk_size=256)[0] ** 2), argnums=(0, 1, 2)))
    return f.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  n = 4096
  dense = n * n * 4
  assert temp_bytes("xla", n) >= dense
  assert temp_bytes("chunked", n) < dense / 8
  # Doubling the length at most ~doubles the chunked path's memory (xla: ~4x).
  assert temp_bytes("chunked", n) < 2.5 * temp_bytes("chunked", n // 2)


@pytest.mark.parametrize("nq,nk", [(65, 65), (65, 33), (64, 197)])
def test_even_length_padding_used_by_cudnn_is_exact(nq, nk):
  """The padding the cuDNN path applies (odd lengths -> even) changes nothing: checked here
  through the XLA implementation, which shares the wrapper."""
  import functools
  q, k, v = _qkv(nq=nq, nk=nk)
  mask = _kv_mask(2, nk)
  xla = functools.partial(jax.nn.dot_product_attention, implementation="xla")
  even = jax.jit(lambda *a: attention._even_lengths_attention(xla, *a))  # pylint: disable=protected-access
  out = even(q, k, v, mask, None, None)
  ref, _ = kernel(q, k, v, impl="xla", kv_mask=mask)
  chex.assert_trees_all_close(out, ref, atol=1e-5)
  if nq == nk:
    seg = jnp.asarray(np.arange(nq)[None].repeat(2, 0) // 20)
    out = even(q, k, v, mask, seg, seg)
    ref, _ = kernel(q, k, v, impl="xla", kv_mask=mask, q_segment_ids=seg,
                                        kv_segment_ids=seg)
    # attention_kernel zeroes queries with no valid key after any backend; compare the rest.
    rows = attention._rows_with_a_key(q, mask, seg, seg)[:, :, None, None]
    chex.assert_trees_all_close(jnp.where(rows, out, 0.0), ref, atol=1e-5)


def _causal_reference(q, k, v, kv_mask):
  """NumPy softmax attention where query i sees keys j <= i that are not padding."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  n = q.shape[1]
  vis = (np.arange(n)[:, None] >= np.arange(n)[None])[None, None] & \
      np.asarray(kv_mask)[:, None, None, :]
  s = np.where(vis, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_causal_attention_matches_numpy_with_gradients(impl):
  rng = np.random.default_rng(3)
  b, n, h, d = 2, 37, 2, 8  # 37: chunks of 8 leave a ragged last chunk
  q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(np.arange(n)[None] < np.array([30, 37])[:, None])
  out, _ = kernel(q, k, v, impl=impl, kv_mask=mask, causal=True,
                                      chunk_size=8)
  np.testing.assert_allclose(out, _causal_reference(q, k, v, mask), atol=2e-5)
  # the first query sees only itself: out[0] = v[0] exactly
  np.testing.assert_allclose(out[:, 0], v[:, 0], atol=1e-6)
  loss = lambda impl: lambda *a: jnp.sum(kernel(
      *a, impl=impl, kv_mask=mask, causal=True, chunk_size=8)[0] ** 2)
  ref = grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  got = grad(loss(impl), argnums=(0, 1, 2))(q, k, v)
  for a, g in zip(ref, got):
    np.testing.assert_allclose(g, a, atol=5e-5)


def test_causal_is_never_resolved_to_pallas_and_pallas_gpu_takes_it_as_positions(monkeypatch):
  q = jnp.zeros((1, 512, 2, 64), jnp.bfloat16)
  assert attention.choose_impl("auto", q, q, platform="tpu", causal=True) != "pallas_tpu"
  assert attention.choose_impl("auto", q, q, platform="gpu", causal=True,
                               positioned=False) != "pallas_gpu"
  pos = jnp.zeros((1, 512), jnp.int32)
  assert attention.choose_impl("auto", q, q, platform="tpu", positioned=True) != "pallas_tpu"
  with pytest.raises(ValueError, match="pallas_tpu takes static masks only"):
    kernel(q, q, q, impl="pallas_tpu", causal=True)
  with pytest.raises(ValueError, match="causal=True or q/kv positions, not both"):
    kernel(q, q, q, causal=True, q_positions=pos, kv_positions=pos)
  with pytest.raises(ValueError, match="both q_positions and kv_positions"):
    kernel(q, q, q, q_positions=pos)
  # pallas_gpu (interpret mode here) runs causal attention as positions 0..N-1.
  monkeypatch.setenv("MMJAX_PALLAS_INTERPRET", "1")
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 21, 2, 16)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(np.arange(21)[None] < np.array([15, 21])[:, None])
  out, _ = kernel(q, k, v, impl="pallas_gpu", kv_mask=mask, causal=True)
  np.testing.assert_allclose(out, _causal_reference(q, k, v, mask), atol=2e-5)
