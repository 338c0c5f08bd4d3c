"""Train state, the pretraining loss, and the jitted, sharded train step.

One step (survey Table 3, combined with config.loss_weights):
  clean pass     embed -> towers -> pooled projections      contrastive (InfoNCE) / sigmoid
                 hard negatives from the similarity          ITM on 3B re-paired inputs
                 (softmax, diagonal zeroed), then interact
  masked pass    text BERT-masked (80/10/10), patches masked  MLM and MIM from one forward
Contrastive negatives span the global batch: inside `shard_map` over the batch axes the
embeddings are all-gathered with gradient; the sigmoid loss runs as a ring (ppermute), so no
device ever holds the global N x N logits.

Randomness: step s uses fold_in(key(seed), s), so a resumed run replays exactly.
Non-finite loss or gradients never update the parameters: policy 'stop' ends the run (the
loop raises), 'skip' drops the update and counts it in the metrics.
Gradient accumulation (`grad_accum_steps` > 1) scans over micro-batches and averages their
gradients; contrastive negatives are then those of each micro-batch (documented trade-off).
"""
from __future__ import annotations

import functools
import itertools
import re
from typing import Any, Callable, Dict, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import models, sharding
from mmjax import masking, objectives
from mmjax.tokenizers import patchify_image, patchify_spectrogram, patchify_video

NO_DECAY = re.compile(r"(bias|scale|embedding|cls|mask_token|bottleneck_tokens|logit_scale|"
                      r"sigmoid_[tb]|sum_weights)$")
TEXT_SPECIALS = (0, 1, 2, 3)  # PAD, CLS, SEP, MASK of the byte tokenizer (mmjax.data.text)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ------------------------------------------------------------------------------ optimizer

def learning_rate_schedule(config) -> optax.Schedule:
  o = config.optimizer
  total = max(int(config.total_steps), 1)
  warmup = min(int(o.warmup_steps), total - 1) if total > 1 else 0
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=warmup, decay_steps=total,
      end_value=o.learning_rate * o.get("end_lr_ratio", 0.0))


def weight_decay_mask(params):
  """True where weight decay applies: matrices, not norms, biases or embeddings."""
  def keep(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "value" and len(path) > 1:  # boxed (nn.Partitioned) leaf
      name = str(getattr(path[-2], "key", path[-2]))
    return bool(np.ndim(leaf) >= 2 and not NO_DECAY.search(name))
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  o = config.optimizer
  schedule = learning_rate_schedule(config)
  tx = optax.chain(
      optax.clip_by_global_norm(o.grad_clip) if o.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.get("eps", 1e-8),
                  weight_decay=o.weight_decay, mask=weight_decay_mask))
  return tx, schedule


# ------------------------------------------------------------------------------ state

def init_fn(config, model, tx):
  batch = models.dummy_batch(config, 2)

  def init(rng):
    variables = model.init(rng, batch, method=model.init_all)
    params = {"params": variables["params"]}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def state_shardings(config, model, tx, mesh):
  """(abstract unboxed state, its NamedShardings) from the logical rules table."""
  abstract = jax.eval_shape(init_fn(config, model, tx), jax.random.key(0))
  shard = sharding.logical_shardings(abstract, mesh)
  return nn.meta.unbox(abstract), shard


def create_state(config, model, tx, mesh) -> Tuple[TrainState, Any]:
  """Initialize parameters and optimizer state directly into their shardings."""
  _, shard = state_shardings(config, model, tx, mesh)
  init = init_fn(config, model, tx)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shard)(
        jax.random.key(config.seed))
  return state, shard


# ------------------------------------------------------------------------------ losses

def _mim_target(kind: str, opts, x):
  if kind == "image":
    return patchify_image(x, opts.get("patch", 16))
  if kind == "video":
    return patchify_video(x, tuple(opts.get("tubelet", (2, 16, 16))))
  if kind == "audio":
    return patchify_spectrogram(x, tuple(opts.get("patch", (16, 16))))
  raise ValueError(f"MIM is defined for image, video and audio inputs, not {kind!r}")


def _batch_axes(mesh):
  return tuple(a for a in sharding.BATCH_AXES if mesh.shape[a] > 1)


def _global_loss(fn, mesh, *arrays, scalars=()):
  """Run a batch-level loss over the global batch: inside shard_map over the batch axes when
  the batch is split across devices (fn receives axis_name), else directly."""
  axes = _batch_axes(mesh) if mesh is not None else ()
  if not axes:
    return fn(*arrays, *scalars, axis_name=None)
  spec = P(axes)
  mapped = jax.shard_map(
      functools.partial(fn, axis_name=axes if len(axes) > 1 else axes[0]), mesh=mesh,
      in_specs=(spec,) * len(arrays) + (P(),) * len(scalars), out_specs=(P(), P()),
      check_vma=False)
  return mapped(*arrays, *scalars)


def compute_losses(model: models.MultimodalModel, params, batch, rng, config, mesh=None):
  """Weighted pretraining loss and per-objective metrics for one (micro-)batch."""
  w = {k: float(v) for k, v in config.loss_weights.items() if float(v) > 0}
  mods = model.modalities
  a, b = mods[0], mods[1]
  mod_cfg = config.model.modalities
  p = params["params"]
  rng_itm, rng_mlm, rng_mim = jax.random.split(rng, 3)
  calls = itertools.count()

  def apply(*args, **kw):
    """model.apply with these params; each call draws its own dropout masks."""
    rngs = {"dropout": jax.random.fold_in(jax.random.fold_in(rng, 7), next(calls))}
    return model.apply(params, *args, rngs=rngs, **kw)
  results: Dict[str, Tuple[jax.Array, Dict[str, jax.Array]]] = {}

  if {"contrastive", "sigmoid", "itm"} & set(w):
    embedded = apply(batch, method=model.embed)
    encoded = apply(embedded, method=model.encode)
    emb = apply(encoded, method=model.contrastive_embedding)
    za, zb = emb[a].astype(jnp.float32), emb[b].astype(jnp.float32)
    if "contrastive" in w:
      results["contrastive"] = _global_loss(objectives.contrastive_loss, mesh, za, zb,
                                            scalars=(p["logit_scale"],))
    if "sigmoid" in w:
      results["sigmoid"] = _global_loss(objectives.sigmoid_loss, mesh, za, zb,
                                        scalars=(p["sigmoid_t"], p["sigmoid_b"]))
    if "itm" in w:
      results["itm"] = _itm(model, apply, p, encoded, za, zb, rng_itm, a, b)

  text_mods = [m for m in mods if mod_cfg[m].kind == "text" and "mlm" in w]
  patch_mods = [m for m in mods if mod_cfg[m].kind in models.PATCH_KINDS and "mim" in w]
  if text_mods or patch_mods:
    masked = dict(batch)
    mlm_targets, mim_masks = {}, {}
    for m in text_mods:
      ids = batch[m]
      masked[m], targets, weights = masking.bert_mask(
          jax.random.fold_in(rng_mlm, mods.index(m)), ids,
          mask_prob=config.objectives.mlm_prob, mask_id=3,
          vocab_size=mod_cfg[m].get("vocab_size", 261), special_ids=TEXT_SPECIALS,
          valid_mask=ids != 0)
      mlm_targets[m] = (targets, weights)
    mim_targets = {}
    for m in patch_mods:
      target = _mim_target(mod_cfg[m].kind, mod_cfg[m], batch[m])
      mim_masks[m] = masking.random_patch_mask(
          jax.random.fold_in(rng_mim, mods.index(m)), target.shape[0], target.shape[1],
          config.objectives.mim_ratio)
      mim_targets[m] = target
    out = apply(masked, mim_masks, method=model.__call__)
    for m in text_mods:
      logits = apply(m, out["tokens"][m][:, :batch[m].shape[1]],
                           method=model.mlm_logits)
      results[f"mlm_{m}" if len(text_mods) > 1 else "mlm"] = objectives.mlm_loss(
          logits, *mlm_targets[m])
    for m in patch_mods:
      n_cls = 1 if mod_cfg[m].get("add_cls", True) else 0
      n = mim_targets[m].shape[1]
      pred = apply(m, out["tokens"][m][:, n_cls:n_cls + n],
                         method=model.mim_prediction)
      results[f"mim_{m}" if len(patch_mods) > 1 else "mim"] = objectives.mim_loss(
          pred, mim_targets[m], mim_masks[m].astype(jnp.float32),
          norm_pix=config.objectives.norm_pix)
  weights = {k: w[k.split("_")[0]] for k in results}
  return objectives.combine_losses(results, weights)


def _itm(model, apply, p, encoded, za, zb, rng, a, b):
  """ITM with hard negatives: B positives, B (A_i, hard B) and B (hard A, B_j) negatives."""
  za_n = za / jnp.linalg.norm(za, axis=-1, keepdims=True).clip(1e-6)
  zb_n = zb / jnp.linalg.norm(zb, axis=-1, keepdims=True).clip(1e-6)
  scale = jnp.exp(p["logit_scale"]).clip(max=100.0)
  sim = jax.lax.stop_gradient(scale * (za_n @ zb_n.T))  # scaled: softmax over cosines is flat
  neg_b, neg_a = objectives.itm_hard_negatives(rng, sim)
  take = lambda x, idx: jax.tree.map(lambda t: jnp.take(t, idx, axis=0), x)
  ea, eb = encoded[a], encoded[b]
  cat = lambda *xs: jax.tree.map(lambda *t: jnp.concatenate(t, axis=0), *xs)
  pairs = dict(encoded)
  pairs[a] = cat(ea, ea, take(ea, neg_a))
  pairs[b] = cat(eb, take(eb, neg_b), eb)
  for m in model.modalities:
    if m not in (a, b):
      pairs[m] = cat(encoded[m], encoded[m], encoded[m])
  out = apply(pairs, method=model.interact)
  logits = apply(out["joint"], method=model.itm_logits).astype(jnp.float32)
  n = za.shape[0]
  labels = jnp.concatenate([jnp.ones((n,), jnp.int32), jnp.zeros((2 * n,), jnp.int32)])
  return objectives.itm_loss(logits, labels)


# ------------------------------------------------------------------------------ step

def _split_micro(batch, k):
  return jax.tree.map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)


def make_train_step(config, model, tx, schedule, mesh, state_sharding) -> Callable:
  """jit(step)(state, batch) -> (state, metrics), sharded per the rules; state donated."""
  accum = int(config.get("grad_accum_steps", 1))

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)

    def loss_fn(params, micro, r):
      return compute_losses(model, params, micro, r, config, mesh)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, rng)
    else:
      micro = _split_micro(batch, accum)

      def body(carry, xs):
        g_sum, m_sum = carry
        mb, i = xs
        (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, g_sum, g), jax.tree.map(jnp.add, m_sum, m)), None

      zeros_g = jax.tree.map(jnp.zeros_like, state.params)
      m_shape = jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(
          lambda x: x[0], micro), rng)[0][1])
      zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
      (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m),
                                         (micro, jnp.arange(accum)))
      grads = jax.tree.map(lambda g: g / accum, grads)
      metrics = jax.tree.map(lambda m: m / accum, metrics)
      loss = metrics["loss"]
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state))
    metrics = dict(metrics)
    metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step),
                   skipped=1.0 - finite.astype(jnp.float32))
    return new_state, metrics

  batch_sh = NamedSharding(mesh, P(sharding.BATCH_AXES))
  jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sh),
                   out_shardings=(state_sharding, NamedSharding(mesh, P())),
                   donate_argnums=(0,))

  def run(state, batch):
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
      return jitted(state, batch)
  run.jitted = jitted
  run.lower = lambda state, batch: _lower(jitted, mesh, state, batch)
  return run


def _lower(jitted, mesh, state, batch):
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    return jitted.lower(state, batch)
