"""Pallas kernels (interpret mode on CPU) and the chunked path against the xla reference.

Forward and jax.grad wrt q, k, v, with key padding, Nq != Nk, several heads and segment ids;
the mesh (shard_map) path; the splash kernel compiled for a TPU v5e 2x2 topology through
libtpu's compile-only devices; the benchmark's JSON contract.
"""
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mmjax import attention, kernels
from mmjax.bench import attention as bench
from mmjax.kernels import pallas_gpu, pallas_tpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(b=2, nq=100, nk=160, h=2, d=32, seed=0, masks="seg"):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (b, nq, h, d))
  k = jax.random.normal(ks[1], (b, nk, h, d))
  v = jax.random.normal(ks[2], (b, nk, h, d))
  kw = {}
  if masks in ("pad", "seg"):
    lens = np.array([nk * 3 // 4, nk])[:b]
    kw["kv_mask"] = jnp.arange(nk)[None] < jnp.asarray(lens)[:, None]
  if masks == "seg":  # three segments per example, boundaries differ between q and kv
    kw["q_segment_ids"] = jnp.asarray(np.repeat(np.arange(nq)[None] * 3 // nq, b, 0))
    kw["kv_segment_ids"] = jnp.asarray(np.repeat(np.arange(nk)[None] * 3 // nk, b, 0))
  return (q, k, v), kw


def _assert_matches_xla(impl, qkv, kw, atol=2e-5):
  def loss(impl, q, k, v):
    out, _ = attention.attention_kernel(q, k, v, impl=impl, **kw)
    return jnp.sum(jnp.sin(out)), out

  # One compiled program per side (an eager grad would compile each of its ops alone).
  grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True), static_argnums=0)
  (_, ref), gref = grad("xla", *qkv)
  (_, out), gout = grad(impl, *qkv)
  chex.assert_trees_all_close(out, ref, atol=atol, rtol=atol)
  for name, a, b in zip("qkv", gout, gref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=atol,
                               err_msg=f"{impl}: d{name}")


# ----------------------------------------------------------------------------- pallas_gpu
@pytest.mark.parametrize("nq,nk,h,d,masks", [
    (100, 160, 2, 32, "seg"),   # Nq != Nk, not block multiples, padding + segment ids
    (128, 128, 3, 64, "pad"),   # block multiples, three heads, key padding only
    (37, 200, 2, 24, "none"),   # head_dim padded to 32; lengths padded; no user mask
])
def test_pallas_gpu_interpret_matches_xla(nq, nk, h, d, masks):
  qkv, kw = _inputs(nq=nq, nk=nk, h=h, d=d, masks=masks)
  _assert_matches_xla("pallas_gpu", qkv, kw)


def test_pallas_gpu_small_blocks_and_bf16():
  (q, k, v), kw = _inputs(nq=70, nk=90, masks="seg")
  blocks = pallas_gpu.BlockSizes(block_q=32, block_k=16, block_q_bwd=16, block_k_bwd=32)
  f = lambda q, k, v: pallas_gpu.flash_attention(q, k, v, block_sizes=blocks, interpret=True,
                                                 **kw)
  ref = attention.xla_attention(q, k, v, **kw)[0]
  chex.assert_trees_all_close(jax.jit(f)(q, k, v), ref, atol=2e-5)
  g = jax.jit(jax.grad(lambda q: jnp.sum(f(q, k, v) ** 2)))(q)
  gr = jax.jit(jax.grad(lambda q: jnp.sum(attention.xla_attention(q, k, v, **kw)[0] ** 2)))(q)
  chex.assert_trees_all_close(g, gr, atol=5e-5)
  qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
  out = pallas_gpu.flash_attention(qb, kb, vb, interpret=True, **kw)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=5e-2)


# ----------------------------------------------------------------------------- pallas_tpu
@pytest.mark.parametrize("nq,nk,h,d,masks", [
    (100, 200, 2, 64, "seg"),   # padded to 128 / 256, key padding + segment ids, Nq != Nk
    (256, 128, 3, 32, "pad"),
])
def test_splash_tpu_interpret_matches_xla(nq, nk, h, d, masks):
  from jax.experimental.pallas import tpu as pltpu
  qkv, kw = _inputs(nq=nq, nk=nk, h=h, d=d, masks=masks)
  with pltpu.force_tpu_interpret_mode():
    _assert_matches_xla("pallas_tpu", qkv, kw)


# ----------------------------------------------------------------------------- chunked
@pytest.mark.parametrize("masks", ["seg", "pad"])
def test_chunked_matches_xla_with_segments(masks):
  qkv, kw = _inputs(nq=100, nk=160, h=3, d=16, masks=masks)
  kw = dict(kw, chunk_size=32)
  _assert_matches_xla("chunked", qkv, kw)


# ----------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_query_without_keys_is_zero_and_grads_finite(impl):
  (q, k, v), _ = _inputs(nq=20, nk=30, masks="none")
  mask = jnp.array([[False] * 30, [True] * 10 + [False] * 20])
  out, _ = attention.attention_kernel(q, k, v, impl=impl, kv_mask=mask)
  np.testing.assert_array_equal(np.asarray(out[0]), 0.0)
  ref, _ = attention.attention_kernel(q, k, v, impl="xla", kv_mask=mask)
  chex.assert_trees_all_close(out, ref, atol=2e-5)
  g = jax.jit(jax.grad(lambda q: jnp.sum(attention.attention_kernel(q, k, v, impl=impl,
                                                                    kv_mask=mask)[0])))(q)
  assert bool(jnp.all(jnp.isfinite(g)))
  np.testing.assert_array_equal(np.asarray(g[0]), 0.0)


def test_interpret_default_and_env(monkeypatch):
  monkeypatch.delenv("MMJAX_PALLAS_INTERPRET", raising=False)
  assert kernels.default_interpret("pallas_gpu") == (jax.default_backend() != "gpu")
  assert kernels.default_interpret("pallas_tpu") == (jax.default_backend() != "tpu")
  monkeypatch.setenv("MMJAX_PALLAS_INTERPRET", "1")
  assert kernels.default_interpret("pallas_gpu") and kernels.default_interpret("pallas_tpu")
  monkeypatch.setenv("MMJAX_PALLAS_INTERPRET", "0")
  assert not kernels.default_interpret("pallas_tpu")
  with pytest.raises(ValueError, match="unknown Pallas kernel"):
    kernels.kernel_fn("pallas_cpu")


def test_auto_choice_by_platform():
  x = lambda n, d=64, dt=jnp.float32: jax.ShapeDtypeStruct((1, n, 4, d), dt)
  bf = jnp.bfloat16
  assert attention.choose_impl("auto", x(1024), x(1024), platform="tpu") == "pallas_tpu"
  assert attention.choose_impl("auto", x(1024, 80), x(1024, 80), platform="tpu") == "xla"
  assert attention.choose_impl("auto", x(64), x(64), platform="tpu") == "xla"
  assert attention.choose_impl("auto", x(1024, 64, bf), x(1024), platform="gpu") == "cudnn"
  assert attention.choose_impl("auto", x(1024), x(1024), platform="gpu") == "pallas_gpu"
  assert attention.choose_impl("auto", x(100), x(100), platform="gpu") == "xla"
  assert attention.choose_impl("auto", x(1024), x(1024), platform="cpu") == "xla"
  assert attention.choose_impl("auto", x(8192), x(8192), platform="cpu") == "chunked"


def _mesh():
  return jax.make_mesh((4, 1, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


def test_pallas_under_mesh_runs_per_shard(monkeypatch):
  """Under jax.set_mesh the kernel sees per-shard [B/4, N, H/2, D] blocks; result == xla."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (simulated) devices; see tests/conftest.py")
  mesh = _mesh()
  (q, k, v), kw = _inputs(b=4, nq=48, nk=64, h=2, d=16, masks="none")
  kw["kv_mask"] = jnp.arange(64)[None] < jnp.array([[40], [64], [10], [64]])
  seen = []
  real = pallas_gpu.flash_attention

  def spy(q, k, v, **kwargs):
    seen.append(q.shape)
    return real(q, k, v, **kwargs)

  monkeypatch.setattr(pallas_gpu, "flash_attention", spy)
  xs = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  f = jax.jit(lambda q, k, v: attention.attention_kernel(q, k, v, impl="pallas_gpu", **kw)[0])
  with jax.set_mesh(mesh):
    out = f(*(jax.device_put(x, xs) for x in (q, k, v)))
  assert seen and seen[0] == (1, 48, 1, 16)
  ref, _ = attention.attention_kernel(q, k, v, impl="xla", **kw)
  chex.assert_trees_all_close(out, ref, atol=2e-5)


def test_splash_sharded_matches_xla_on_cpu_mesh():
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (simulated) devices")
  mesh = _mesh()
  (q, k, v), kw = _inputs(b=4, nq=128, nk=128, h=2, d=32, masks="none")
  seg = jnp.asarray(np.repeat((np.arange(128) // 50)[None], 4, 0))
  out = jax.jit(lambda q, k, v: pallas_tpu.splash_attention_sharded(
      q, k, v, q_segment_ids=seg, kv_segment_ids=seg, mesh=mesh, interpret=True))(q, k, v)
  ref, _ = attention.attention_kernel(q, k, v, impl="xla", q_segment_ids=seg,
                                      kv_segment_ids=seg)
  chex.assert_trees_all_close(out, ref, atol=2e-5)


# ----------------------------------------------------------------------------- TPU compile
_TPU_COMPILE = textwrap.dedent("""
    import json, os
    import numpy as np, jax, jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    from mmjax import attention
    from mmjax.kernels import pallas_tpu

    topo = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
    mesh = Mesh(np.asarray(topo.devices).reshape(2, 1, 2), ("data", "fsdp", "tensor"),
                axis_types=(AxisType.Auto,) * 3)
    B, N, H, D = 4, 1000, 4, 128   # N is padded to 1024 inside; heads split over tensor=2

    def step_explicit(q, k, v, mask, seg):
      def loss(q, k, v):
        o = pallas_tpu.splash_attention_sharded(q, k, v, kv_mask=mask, q_segment_ids=seg,
                                                kv_segment_ids=seg, mesh=mesh)
        return jnp.mean(jnp.square(o.astype(jnp.float32)))
      return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    def step_dispatch(q, k, v, mask, seg):  # attention_kernel + the mesh from jax.set_mesh
      def loss(q, k, v):
        o, _ = attention.attention_kernel(q, k, v, impl="pallas_tpu", kv_mask=mask,
                                          q_segment_ids=seg, kv_segment_ids=seg)
        return jnp.mean(jnp.square(o.astype(jnp.float32)))
      return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    xs = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    rs = NamedSharding(mesh, P(("data", "fsdp"), None))
    x = jax.ShapeDtypeStruct((B, N, H, D), jnp.bfloat16, sharding=xs)
    m = jax.ShapeDtypeStruct((B, N), jnp.bool_, sharding=rs)
    s = jax.ShapeDtypeStruct((B, N), jnp.int32, sharding=rs)
    res = {}
    for name, step in (("explicit", step_explicit), ("dispatch", step_dispatch)):
      f = jax.jit(step, in_shardings=(xs, xs, xs, rs, rs),
                  out_shardings=(NamedSharding(mesh, P()), (xs, xs, xs)))
      with jax.set_mesh(mesh):
        lowered = f.lower(x, x, x, m, s)
      compiled = lowered.compile()
      mem = compiled.memory_analysis()
      res[name] = dict(custom_calls=lowered.as_text().count("tpu_custom_call"),
                       device_kind=topo.devices[0].device_kind,
                       temp_bytes=int(mem.temp_size_in_bytes),
                       arg_bytes=int(mem.argument_size_in_bytes))
    print("RESULT " + json.dumps(res))
""")


def test_splash_compiles_for_tpu_topology():
  """Sharded splash fwd+bwd compiles for TPU v5e 2x2 via libtpu's compile-only devices.

  Runs in a subprocess with JAX_PLATFORMS=cpu (nothing else is needed: the topology API loads
  libtpu itself) and MMJAX_PALLAS_INTERPRET=0 (the default backend is CPU, and the kernel must
  be lowered for Mosaic, not interpreted). No XLA_FLAGS device count: the mesh is the topology's.
  """
  try:
    import libtpu  # noqa: F401
  except ImportError:
    pytest.skip("libtpu is not installed (requirements.txt pins it for TPU compile-only tests)")
  env = dict(os.environ, JAX_PLATFORMS="cpu", MMJAX_PALLAS_INTERPRET="0", TPU_SKIP_MDS_QUERY="1",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-c", _TPU_COMPILE], capture_output=True, text=True,
                     env=env, timeout=600, cwd=ROOT)
  lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
  assert p.returncode == 0 and lines, p.stderr[-3000:]
  res = json.loads(lines[0][len("RESULT "):])
  for name in ("explicit", "dispatch"):
    assert res[name]["custom_calls"] >= 3, res  # splash fwd, dq and dkv Mosaic kernels
    assert res[name]["device_kind"].startswith("TPU v5")
    assert res[name]["arg_bytes"] > 0


# ----------------------------------------------------------------------------- benchmark
def test_bench_single_measurement_json():
  p = subprocess.run([sys.executable, "-m", "mmjax.bench.attention", "--impl=chunked",
                      "--seq_len=256", "--heads=2", "--head_dim=16", "--batch=1",
                      "--chunk_size=64", "--reps=2"],
                     capture_output=True, text=True, timeout=300, cwd=ROOT,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = [l for l in p.stdout.splitlines() if l.strip()]
  assert p.returncode == 0 and len(lines) == 1, p.stdout + p.stderr[-2000:]
  rec = json.loads(lines[0])
  assert rec["ok"] and rec["impl"] == "chunked" and rec["time_s"] > 0 and rec["peak_bytes"] > 0
  flops = 3.5 * 4 * 1 * 2 * 256 * 256 * 16
  assert abs(rec["tflops"] - flops / rec["time_s"] / 1e12) < 1e-9


def test_bench_errors_are_json_not_crashes():
  rec = bench.measure("cudnn", 128, 1, 16, dtype="float32", reps=1)  # cudnn needs GPU + bf16
  assert rec["ok"] is False and rec["error"]
  rec = bench.measure("xla", 512, 1, 16, reps=1, max_bytes=1024)
  assert rec["ok"] is False and rec["error"].startswith("would need")
  table = bench.markdown_table([rec])
  assert "would need" in table and table.startswith("| impl |")
