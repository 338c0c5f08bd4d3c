"""Model summary: parameter count and forward FLOPs for any config, printed as a table.

Forward FLOPs come from XLA's cost analysis of the jitted forward (no parameters are
materialized: everything is lowered from shapes). Attention-core FLOPs (QK^T and PV,
4 * B * H * Nq * Nk * D per attention, attention.attention_core_flops) are sown by every
MultiHeadAttention and summed, so the table shows how the interaction cost grows with token
counts (the survey's per-layer cost column of the fusion designs).

  python -m mmjax.summary --config=configs/default.py [--config.model.fusion=early_concat]
"""
from __future__ import annotations

import collections
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import models
from mmjax.configure import resolve_model


def shape_tree(tree):
  """jax.ShapeDtypeStructs of a tree of arrays (or array-likes, or ShapeDtypeStructs)."""
  def one(x):
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return jax.ShapeDtypeStruct(np.shape(x), dtype)
  return jax.tree.map(one, tree)


def param_shapes(model, batch):
  return jax.eval_shape(lambda b: model.init(jax.random.key(0), b, method=model.init_all),
                        shape_tree(batch))


def count_params(params) -> Dict[str, int]:
  """Parameter count per top-level group ('embed_text', 'fusion', ...) and 'total'."""
  counts: Dict[str, int] = collections.Counter()
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in flat:
    keys = [getattr(p, "key", getattr(p, "name", str(p))) for p in path]
    group = keys[1] if keys and keys[0] == "params" and len(keys) > 1 else keys[0]
    counts[str(group)] += int(np.prod(leaf.shape))
  counts["total"] = sum(v for k, v in counts.items())
  return dict(counts)


def forward_flops(model, params, batch) -> float:
  """Total forward FLOPs of the jitted forward, from XLA's cost analysis."""
  fn = jax.jit(lambda p, b: model.apply(p, b))
  compiled = fn.lower(params, shape_tree(batch)).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def _sown_flops_fn(model, params, batch):
  """fn() -> {path: sum of the attention-core FLOPs sown there} for one forward, to be jitted.

  The sown values are constants, so XLA prunes the whole forward: nothing is materialized.
  Paths are jax.tree_util.keystr's of the 'attn_flops' collection (e.g. "['fusion']...").
  """
  shapes, batch_shapes = shape_tree(params), shape_tree(batch)

  def fn():
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)
    _, state = model.apply(jax.tree.map(zeros, shapes), jax.tree.map(zeros, batch_shapes),
                           mutable=["attn_flops"])
    flat = jax.tree_util.tree_flatten_with_path(state.get("attn_flops", {}))[0]
    return {jax.tree_util.keystr(p): jnp.sum(x) for p, x in flat}
  return fn


def sown_attention_flops_by_path(model, params, batch) -> Dict[str, float]:
  """Attention-core FLOPs of the forward per sown path (a scanned stack: summed over layers)."""
  return {k: float(v) for k, v in jax.jit(_sown_flops_fn(model, params, batch))().items()}


def sown_attention_flops(model, params, batch) -> float:
  """Total attention-core FLOPs sown by every attention in the forward."""
  fn = _sown_flops_fn(model, params, batch)
  return float(jax.jit(lambda: sum(fn().values()))())


def summarize(config, batch_size: int = 1) -> Dict[str, Any]:
  """Everything the table shows, per example (batch_size 1 by default). `config`: a
  ConfigDict, Config or ModelConfig."""
  mc = resolve_model(config)
  model = models.build_model(mc)
  batch = models.dummy_batch(mc, batch_size)
  variables = param_shapes(model, batch)
  params = {"params": variables["params"]}
  return {
      "fusion": mc.fusion.name,
      "params": count_params(params),
      "forward_flops": forward_flops(model, params, batch) / batch_size,
      "attention_flops": sown_attention_flops(model, params, batch) / batch_size,
      "tokens": {m: num_tokens(model, params, batch, m) for m in mc.names},
  }


def num_tokens(model, params, batch, modality) -> int:
  """Number of tokens the embedder of `modality` produces for this batch ([CLS] included)."""
  out = jax.eval_shape(lambda p, b: model.apply(p, b, method=model.embed), params,
                       shape_tree(batch))
  return int(out[modality][0].shape[1])


def format_table(s: Dict[str, Any]) -> str:
  rows = [("fusion", s["fusion"])]
  rows += [(f"tokens[{m}]", str(n)) for m, n in s["tokens"].items()]
  rows += [(f"params[{k}]", f"{v:,}") for k, v in s["params"].items() if k != "total"]
  rows += [("params total", f"{s['params']['total']:,}"),
           ("forward GFLOPs / example", f"{s['forward_flops'] / 1e9:.4f}"),
           ("attention-core GFLOPs / example", f"{s['attention_flops'] / 1e9:.4f}")]
  w = max(len(r[0]) for r in rows)
  return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  print(format_table(summarize(flags.FLAGS.config)))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
  flags.mark_flags_as_required(["config"])
  app.run(main)
