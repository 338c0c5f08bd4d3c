"""Gradient accumulation: one step's loss and gradients from K micro-batches (grad_accum_steps).

Micro-batch i holds rows i, K + i, 2K + i, ... of the step's batch [B, ...] (`split`), so each
is spread over the batch shards exactly as the batch is. config.grad_accum_negatives says how
the micro-batches combine:

  'batch'  exact (GradCache, Gao et al. 2021): the loss and gradients of the whole batch at
           one micro-batch's activation memory.
             1. o_i = outputs(params, micro_i) for every i (the objectives' pretraining
                outputs: embeddings, logits, targets), without gradients;
             2. o = the o_i back in batch order (`join`); (L, metrics) = losses(o); g = dL/do;
             3. grads = sum_i vjp(outputs(., micro_i))(g_i): each micro-batch's forward and
                backward again, pulled back through its rows of the cached cotangent.
           Batch-level losses see every example of the step (contrastive and sigmoid
           negatives, over the mesh as without accumulation) and means over tokens or pairs
           are over the whole batch. An objective whose loss runs part of the model on the
           whole batch (ITM: hard negatives mined over every example, each pair through the
           interaction) caches its inputs instead (Objective.cache) and runs that part in
           step 2, in K rematerialized chunks (objectives.CachedRun): its parameters'
           gradients come from step 2, the towers' through step 3. Masks and dropout are
           drawn per micro-batch. Cost: one more forward per micro-batch.
  'micro'  each micro-batch's loss and gradients on its own, averaged; contrastive negatives
           are those of the micro-batch.

An objective's outputs are arrays with a leading example axis or values that do not depend on
the examples (a temperature); the second kind is read from micro-batch 0, and its cotangent
is shared out equally, g / K to each micro-batch.
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import jax
import jax.numpy as jnp

from mmjax import objectives, sharding

MODES = ("batch", "micro")


def split(batch, k: int, mesh=None):
  """{key: [B, ...]} -> {key: [K, B / K, ...]}; micro-batch i is rows i::K
  (sharding.strided_chunks)."""
  return jax.tree.map(lambda x: sharding.strided_chunks(x, k, mesh), batch)


join = sharding.join_chunks  # [K, b, ...] -> [K * b, ...], the inverse of `split`


def micro_average(grad_fn: Callable, params, micro, rng, k: int, unroll: bool = False):
  """'micro': (loss, metrics, grads) as the mean over micro-batches of
  grad_fn(params, micro_i, fold_in(rng, i)) -> ((loss, metrics), grads). unroll: the loop
  unrolled (XLA's FLOP count sees a loop body once)."""
  def body(carry, xs):
    g_sum, m_sum = carry
    mb, i = xs
    (_, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return (jax.tree.map(jnp.add, g_sum, g), jax.tree.map(jnp.add, m_sum, m)), None

  first = jax.tree.map(lambda x: x[0], micro)
  m_shape = jax.eval_shape(lambda: grad_fn(params, first, rng)[0][1])
  zeros = (jax.tree.map(jnp.zeros_like, params),
           jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape))
  (grads, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(k)),
                                     unroll=k if unroll else 1)
  grads = jax.tree.map(lambda g: g / k, grads)
  metrics = jax.tree.map(lambda m: m / k, metrics)
  return metrics["loss"], metrics, grads


class _Flat:
  """The objectives' outputs as a flat list of arrays; the rest of the tree (names, pairs,
  Python numbers) is static and kept from the first trace."""

  def __init__(self, model, config, prepare: Callable):
    self.model, self.config, self.prepare = model, config, prepare
    self.treedef, self.static, self.dynamic = None, None, None

  def __call__(self, params, micro, rng) -> List[jax.Array]:
    out = objectives.pretraining_outputs_of(self.model, self.prepare(params), micro, rng,
                                            self.config.objectives, cached=True)
    leaves, treedef = jax.tree.flatten(out)
    dynamic = [isinstance(x, jax.Array) for x in leaves]
    if self.treedef is None:
      self.treedef, self.dynamic = treedef, dynamic
      self.static = [None if d else x for x, d in zip(leaves, dynamic)]
    return [x for x, d in zip(leaves, dynamic) if d]

  def tree(self, arrays: List[jax.Array]):
    it = iter(arrays)
    return jax.tree.unflatten(self.treedef, [next(it) if d else s
                                             for s, d in zip(self.static, self.dynamic)])


def _per_example(flat: _Flat, params, micro) -> List[bool]:
  """Which outputs have a leading example axis: those whose first dimension doubles with the
  micro-batch (shapes only, nothing runs)."""
  shapes = lambda tree, n: jax.tree.map(  # noqa: E731
      lambda x: jax.ShapeDtypeStruct((n * x.shape[1],) + x.shape[2:], x.dtype), tree)
  params_s = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  rng = jax.random.key(0)
  one = jax.eval_shape(flat, params_s, shapes(micro, 1), rng)
  two = jax.eval_shape(flat, params_s, shapes(micro, 2), rng)
  return [a.ndim > 0 and b.shape[0] == 2 * a.shape[0] for a, b in zip(one, two)]


def cached_outputs(model, config, mesh, prepare: Callable, params, micro, rng, k: int,
                   unroll: bool = False) -> Tuple[jax.Array, Any, Any]:
  """'batch': (loss, metrics, grads) of the whole batch from K micro-batches [K, b, ...]
  (see the module docstring); `prepare(params)` is applied before every forward (frozen
  parameters get stop_gradient there); unroll as in micro_average."""
  flat = _Flat(model, config, prepare)
  per_example = _per_example(flat, params, micro)
  rng_i = lambda i: jax.random.fold_in(rng, i)  # noqa: E731

  def forward(_, xs):
    mb, i = xs
    return None, flat(params, mb, rng_i(i))
  unroll = k if unroll else 1
  _, stacked = jax.lax.scan(forward, None, (micro, jnp.arange(k)), unroll=unroll)
  full = [join(s) if e else s[0] for s, e in zip(stacked, per_example)]
  diff = [i for i, x in enumerate(full) if jnp.issubdtype(x.dtype, jnp.inexact)]

  def losses(diff_arrays, p):
    arrays = list(full)
    for i, x in zip(diff, diff_arrays):
      arrays[i] = x
    apply = lambda fn, *a, rng: model.apply(prepare(p), *a, method=fn,  # noqa: E731
                                            rngs={"dropout": rng})
    run = objectives.CachedRun(apply, k, rng, mesh, unroll > 1)
    return objectives.losses_from_outputs(flat.tree(arrays), config.objectives, mesh, run)
  (loss, metrics), (cot, direct) = jax.value_and_grad(losses, argnums=(0, 1), has_aux=True)(
      [full[i] for i in diff], params)
  cot = [split({"x": g}, k, mesh)["x"] if per_example[i] else
         jnp.broadcast_to(g / k, (k,) + g.shape) for i, g in zip(diff, cot)]

  def backward(acc, xs):
    mb, i, g = xs
    _, pull = jax.vjp(lambda p: [flat(p, mb, rng_i(i))[j] for j in diff], params)
    (grads,) = pull(g)
    return jax.tree.map(jnp.add, acc, grads), None
  grads, _ = jax.lax.scan(backward, direct, (micro, jnp.arange(k), cot), unroll=unroll)
  return loss, metrics, grads
