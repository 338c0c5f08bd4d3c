"""Layer stacks: scan == loop, remat == plain, logical axes on every parameter."""
import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.layers import BlockConfig, Encoder
from tests.helpers import apply, init

BLOCK = BlockConfig(width=16, num_heads=2, mlp_dim=32, attention_impl="xla")


def _x():
  x = jax.random.normal(jax.random.key(1), (2, 7, 16))
  mask = jnp.arange(7)[None] < jnp.array([[7], [4]])
  return x, mask


def test_scan_equals_loop():
  x, mask = _x()
  loop = Encoder(BLOCK, 3)
  params = init(loop, jax.random.key(0), x, mask)
  scan = Encoder(dataclasses.replace(BLOCK, scan=True), 3)
  sp = init(scan, jax.random.key(0), x, mask)
  # Stack the loop's per-layer parameters into the scan layout.
  unbox = nn.meta.unbox(params)["params"]
  stacked = jax.tree.map(lambda *ls: jnp.stack(ls), *[unbox[f"layer_{i}"] for i in range(3)])
  sp_un = nn.meta.unbox(sp)["params"]
  chex.assert_trees_all_equal_shapes(sp_un["layers"]["block"], stacked)
  sp_un = {"layers": {"block": stacked}, "ln_final": unbox["ln_final"]}
  chex.assert_trees_all_close(apply(scan, {"params": sp_un}, x, mask),
                              apply(loop, params, x, mask), atol=1e-5)
  # The scanned parameters carry the 'layers' logical axis first.
  spec = nn.get_partition_spec(sp)["params"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
  assert tuple(spec) == ("layers", "embed", "mlp")


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
@pytest.mark.parametrize("scan", [False, True])
def test_remat_is_exact(policy, scan):
  x, mask = _x()
  plain = Encoder(dataclasses.replace(BLOCK, scan=scan), 2)
  remat = Encoder(dataclasses.replace(BLOCK, scan=scan, remat=policy), 2)
  params = init(plain, jax.random.key(0), x, mask)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x, mask) ** 2)
  grad = lambda m: jax.jit(jax.grad(loss(m)))(params)
  chex.assert_trees_all_close(grad(remat), grad(plain),
                              atol=1e-5)


def test_every_parameter_has_logical_axes():
  x, mask = _x()
  params = init(Encoder(BLOCK, 2), jax.random.key(0), x, mask)
  flat = jax.tree_util.tree_leaves(params["params"], is_leaf=lambda l: isinstance(l, nn.Partitioned))
  assert flat and all(isinstance(l, nn.Partitioned) for l in flat)
  names = {n for l in flat for n in l.names}
  assert {"embed", "mlp", "heads", "kv"} <= names


def test_depth_zero_is_identity_and_bad_policy_errors():
  x, mask = _x()
  enc = Encoder(BLOCK, 0)
  params = init(enc, jax.random.key(0), x, mask)
  np.testing.assert_array_equal(np.asarray(apply(enc, params, x, mask)), np.asarray(x))
  with pytest.raises(ValueError, match="unknown remat policy"):
    Encoder(dataclasses.replace(BLOCK, remat="some"), 1).init(jax.random.key(0), x, mask)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_dropout_only_with_a_dropout_rng(scan, remat):
  """Residual dropout is the identity without a 'dropout' rng (evaluation), random with one
  (same key: same masks; scanned layers draw different masks), and exact under remat."""
  x, mask = _x()
  plain = Encoder(dataclasses.replace(BLOCK, scan=scan, remat=remat), 3)
  drop = Encoder(dataclasses.replace(BLOCK, scan=scan, remat=remat, dropout=0.3), 3)
  params = init(plain, jax.random.key(0), x, mask)
  ref = apply(plain, params, x, mask)
  chex.assert_trees_all_close(apply(drop, params, x, mask), ref)
  a = apply(drop, params, x, mask, rngs={"dropout": jax.random.key(1)})
  b = apply(drop, params, x, mask, rngs={"dropout": jax.random.key(2)})
  chex.assert_trees_all_close(apply(drop, params, x, mask, rngs={"dropout": jax.random.key(1)}), a)
  assert float(jnp.abs(a - ref).max()) > 1e-2 and float(jnp.abs(a - b).max()) > 1e-2
  # Gradients through remat recompute the same masks.
  g = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(
      m.apply(p, x, mask, rngs={"dropout": jax.random.key(1)}) ** 2)))(params)
  no_remat = Encoder(dataclasses.replace(BLOCK, scan=scan, dropout=0.3), 3)
  chex.assert_trees_all_close(g(drop), g(no_remat), atol=1e-4)  # grads are O(1)


def test_dropout_rate_and_scaling():
  from mmjax.layers import dropout  # pylint: disable=import-outside-toplevel

  class Drop(nn.Module):
    rate: float

    def __call__(self, x):
      return dropout(self, self.rate, x)
  x = jnp.ones((200_000,))
  y = Drop(0.3).apply({}, x, rngs={"dropout": jax.random.key(0)})
  assert abs(float(jnp.mean(y == 0)) - 0.3) < 0.01          # rate of dropped units
  assert abs(float(jnp.mean(y)) - 1.0) < 0.01               # inverted: E[y] = x
  np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.7], rtol=1e-6)
  with pytest.raises(ValueError, match="dropout"):
    BlockConfig(width=16, num_heads=2, mlp_dim=32, dropout=1.0)
