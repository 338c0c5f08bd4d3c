"""Model summary: parameter count and forward FLOPs for any config, printed as a table.

Forward FLOPs come from XLA's cost analysis of the jitted forward (no parameters are
materialized: everything is lowered from shapes). Attention-core FLOPs (QK^T and PV,
4 * B * H * Nq * Nk * D per attention) are sown by every MultiHeadAttention and summed, so the
table shows how the interaction cost grows with token counts (SPEC section 2's cost column).

  python -m mmjax.summary --config=configs/default.py [--config.model.fusion=early_concat]
"""
from __future__ import annotations

import collections
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import models


def _shape_tree(tree):
  def one(x):
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return jax.ShapeDtypeStruct(np.shape(x), dtype)
  return jax.tree.map(one, tree)


def param_shapes(model, batch):
  return jax.eval_shape(lambda b: model.init(jax.random.key(0), b, method=model.init_all),
                        _shape_tree(batch))


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
  compiled = fn.lower(params, _shape_tree(batch)).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def attention_flops(model, params, batch) -> float:
  """Sum of the attention-core FLOPs sown by every attention in the forward.

  The sown values are constants, so XLA prunes the whole forward: nothing is materialized.
  """
  shapes, batch_shapes = _shape_tree(params), _shape_tree(batch)

  def fn():
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)
    _, state = model.apply(jax.tree.map(zeros, shapes), jax.tree.map(zeros, batch_shapes),
                           mutable=["attn_flops"])
    return sum(jnp.sum(x) for x in jax.tree.leaves(state.get("attn_flops", {})))
  return float(jax.jit(fn)())


def summarize(config, batch_size: int = 1) -> Dict[str, Any]:
  """Everything the table shows, per example (batch_size 1 by default)."""
  model = models.build_model(config)
  batch = models.dummy_batch(config, batch_size)
  variables = param_shapes(model, batch)
  params = {"params": variables["params"]}
  return {
      "fusion": config.model.fusion,
      "params": count_params(params),
      "forward_flops": forward_flops(model, params, batch) / batch_size,
      "attention_flops": attention_flops(model, params, batch) / batch_size,
      "tokens": {m: _num_tokens(model, params, batch, m) for m in config.model.modalities},
  }


def _num_tokens(model, params, batch, modality) -> int:
  out = jax.eval_shape(lambda p, b: model.apply(p, b, method=model.embed), params,
                       _shape_tree(batch))
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
