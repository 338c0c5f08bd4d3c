"""The losses of the pretraining objectives (survey Table 3) as pure functions on jax arrays.

Every loss returns `(loss, metrics)`: a float32 scalar and a dict of float32 scalars that holds
the loss and, where one exists, an accuracy. `combine_losses` weights and flattens them;
`global_loss` runs a batch-level loss over the global batch of a mesh.

Batch-level losses (contrastive, sigmoid, hard-negative sampling) take `axis_name`: None means
the arrays hold the whole batch; otherwise the function runs inside `jax.shard_map` over the
data-parallel mesh axes (a name or a tuple of names, e.g. ('data', 'fsdp')), each device holding
its rows of the global batch, and the result equals the single-device result on that global
batch (value and gradients, with `check_vma` True or False). In the sharded case:
  contrastive  all-gathers both towers' embeddings with gradient; each device computes its
               rows against all global columns. Memory per device grows with the global batch.
               Multi-positive targets (objectives.multi_positive) all-gather the keys too.
  sigmoid      a ring: each device keeps its A rows and passes B chunks around with ppermute
               (forward and a hand-written backward ring), so no device holds more than a
               [local, local] logits block; memory per device does not grow with device count.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Mapping, Tuple, Union

import jax
import jax.numpy as jnp

from mmjax.layers import l2_normalize  # noqa: F401  (re-exported)
from mmjax.masking import global_rows, itm_hard_negatives  # noqa: F401  (re-exported)

AxisName = Union[str, Tuple[str, ...], None]
Metrics = Dict[str, jax.Array]
LossAndMetrics = Tuple[jax.Array, Metrics]



def _axes(axis_name: AxisName) -> Tuple[str, ...]:
  return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _varying(x, axis_name: AxisName):
  """Mark `x` as varying over `axis_name` inside shard_map (its transpose is a psum).

  A no-op where x already varies, or when shard_map runs with check_vma=False.
  """
  aval = jax.typeof(x)
  have = getattr(aval, "vma", None)
  if have is None:
    have = getattr(getattr(aval, "mat", None), "varying", frozenset())
  missing = tuple(a for a in _axes(axis_name) if a not in have)
  return jax.lax.pcast(x, missing, to="varying") if missing else x


# ------------------------------------------------------------------------------ contrastive

def contrastive_loss(za, zb, logit_scale_param, keys=None, *, axis_name: AxisName = None,
                     max_logit_scale: float = 100.0) -> LossAndMetrics:
  """Symmetric InfoNCE (CLIP) with a learnable, clamped temperature and global-batch negatives.

  za, zb: [B_local, D] embeddings of towers A and B (row i of each is a positive pair); they
  are L2-normalized here. logit_scale_param: scalar log(scale), initialise to log(1/0.07);
  scale s = min(exp(param), max_logit_scale) (above the cap the parameter gets zero gradient).
  With A, B the global (all-gathered, with gradient) normalized embeddings and r = the global
  indices of the local rows:
    L = 1/2 [ CE(s * za @ B.T, r) + CE(s * zb @ A.T, r) ],  averaged over the global batch.
  keys (optional, multi-positive as in UniCL): int [B_local, K]; rows i, j are positives when
  keys_i == keys_j (all K entries: a label [B, 1], or text ids [B, L]). The target of row i is
  then uniform over its positives P_i (the diagonal always among them), in both directions:
    CE_soft(logits_i) = logsumexp_j(logits_ij) - 1/|P_i| sum_{j in P_i} logits_ij.
  keys=None is plain InfoNCE (P_i = {i}). With keys, a top-1 hit is any positive.
  Metrics: loss, i2t_accuracy (A->B top-1), t2i_accuracy (B->A top-1), logit_scale; with keys
  also positives (mean |P_i|).
  """
  za, zb = l2_normalize(za), l2_normalize(zb)
  scale = jnp.minimum(jnp.exp(jnp.asarray(logit_scale_param, jnp.float32)), max_logit_scale)
  if axis_name is None:
    za_all, zb_all = za, zb
  else:
    za_all = jax.lax.all_gather(za, axis_name, tiled=True)
    zb_all = jax.lax.all_gather(zb, axis_name, tiled=True)
  labels = global_rows(za.shape[0], axis_name)
  logits_ab = scale * (za @ zb_all.T)  # [B_local, B_global]
  logits_ba = scale * (zb @ za_all.T)
  metrics = {}
  if keys is None:
    def ce(logits):
      correct = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
      return jnp.mean(jax.nn.logsumexp(logits, axis=1) - correct)

    def acc(logits):
      return jnp.mean((jnp.argmax(logits, axis=1) == labels).astype(jnp.float32))
  else:
    keys = jnp.asarray(keys).reshape(keys.shape[0], -1)
    keys_all = keys if axis_name is None else jax.lax.all_gather(keys, axis_name, tiled=True)
    pos = jnp.all(keys[:, None, :] == keys_all[None, :, :], axis=-1)  # [B_local, B_global]
    pos = pos | (jnp.arange(keys_all.shape[0])[None, :] == labels[:, None])
    count = jnp.sum(pos, axis=1).astype(jnp.float32)
    targets = pos.astype(jnp.float32) / count[:, None]  # uniform over the positives

    def ce(logits):
      return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.sum(targets * logits, axis=1))

    def acc(logits):
      hit = jnp.take_along_axis(pos, jnp.argmax(logits, axis=1)[:, None], axis=1)[:, 0]
      return jnp.mean(hit.astype(jnp.float32))
    metrics["positives"] = jnp.mean(count)

  loss = 0.5 * (ce(logits_ab) + ce(logits_ba))
  metrics.update(loss=loss, i2t_accuracy=acc(logits_ab), t2i_accuracy=acc(logits_ba))
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
  metrics["logit_scale"] = scale
  return metrics["loss"], metrics


# ------------------------------------------------------------------------------ sigmoid

def _pair_loss_sum(za, zb, t, b, positive_diagonal: bool):
  """-sum_ij log sigmoid(z_ij (t za_i.zb_j + b)); z_ij = +1 on the diagonal if positive."""
  logits = t * (za @ zb.T) + b
  if positive_diagonal:
    sign = 2.0 * jnp.eye(za.shape[0], zb.shape[0], dtype=logits.dtype) - 1.0
  else:
    sign = -1.0
  return -jnp.sum(jax.nn.log_sigmoid(sign * logits)), logits


def _ring_perm(n: int):
  return [(j, (j + 1) % n) for j in range(n)]


def _ring_forward(za, zb, t, b, axis_name):
  """Loss sum of the local rows against every chunk, and top-1 hit counts both ways.

  Step k (0..n-1): device i holds the B chunk of device (i - k) mod n; only step 0 (its own
  chunk) has positives. Per-column best scores travel with their chunk.
  """
  n = jax.lax.axis_size(axis_name)
  m = za.shape[0]
  me = jax.lax.axis_index(axis_name)
  rows = me * m + jnp.arange(m)
  perm = _ring_perm(n)

  loss, logits = _pair_loss_sum(za, zb, t, b, True)
  row_val, row_idx = jnp.max(logits, axis=1), rows[jnp.argmax(logits, axis=1)]
  col_val, col_idx = jnp.max(logits, axis=0), rows[jnp.argmax(logits, axis=0)]

  def step(carry, k):
    chunk, col_val, col_idx, loss, row_val, row_idx = carry
    chunk, col_val, col_idx = jax.lax.ppermute((chunk, col_val, col_idx), axis_name, perm)
    part, logits = _pair_loss_sum(za, chunk, t, b, False)
    src = (me - k) % n
    r_val = jnp.max(logits, axis=1)
    r_idx = src * m + jnp.argmax(logits, axis=1)
    better = r_val > row_val
    row_val, row_idx = jnp.where(better, r_val, row_val), jnp.where(better, r_idx, row_idx)
    c_val = jnp.max(logits, axis=0)
    c_idx = rows[jnp.argmax(logits, axis=0)]
    better = c_val > col_val
    col_val, col_idx = jnp.where(better, c_val, col_val), jnp.where(better, c_idx, col_idx)
    return (chunk, col_val, col_idx, loss + part, row_val, row_idx), None

  carry = (zb, col_val, col_idx, loss, row_val, row_idx)
  if n > 1:
    carry, _ = jax.lax.scan(step, carry, jnp.arange(1, n))
  _, col_val, col_idx, loss, row_val, row_idx = carry
  owner = (me + 1) % n if n > 1 else me  # whose chunk (and column stats) this device ends with
  hits_ab = jnp.sum((row_idx == rows).astype(jnp.float32))
  hits_ba = jnp.sum((col_idx == owner * m + jnp.arange(m)).astype(jnp.float32))
  return loss, hits_ab, hits_ba


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sigmoid_ring(za, zb, t, b, axis_name):
  return _ring_forward(za, zb, t, b, axis_name)


def _sigmoid_ring_fwd(za, zb, t, b, axis_name):
  return _ring_forward(za, zb, t, b, axis_name), (za, zb, t, b)


def _sigmoid_ring_bwd(axis_name, res, cts):
  """Backward ring: the gradient for a B chunk travels with the chunk and, after n shifts,
  arrives back at its owner. Logits are recomputed per step; nothing is kept per step."""
  za, zb, t, b = res
  g = cts[0]  # hit counts are metrics: their cotangents are ignored
  n = jax.lax.axis_size(axis_name)
  perm = _ring_perm(n)

  def grads(chunk, positive):
    fn = lambda a, c, tt, bb: _pair_loss_sum(a, c, tt, bb, positive)[0]
    return jax.vjp(fn, za, chunk, t, b)[1](g)

  d_za, d_chunk, d_t, d_b = grads(zb, True)

  def step(carry, _):
    chunk, d_chunk, d_za, d_t, d_b = carry
    chunk, d_chunk = jax.lax.ppermute((chunk, d_chunk), axis_name, perm)
    a, c, tt, bb = grads(chunk, False)
    return (chunk, d_chunk + c, d_za + a, d_t + tt, d_b + bb), None

  if n > 1:
    (_, d_chunk, d_za, d_t, d_b), _ = jax.lax.scan(
        step, (zb, d_chunk, d_za, d_t, d_b), None, length=n - 1)
    d_chunk = jax.lax.ppermute(d_chunk, axis_name, perm)  # home to the chunk's owner
  return d_za, d_chunk, d_t, d_b


_sigmoid_ring.defvjp(_sigmoid_ring_fwd, _sigmoid_ring_bwd)


def sigmoid_loss(za, zb, t_param, b_param, *, axis_name: AxisName = None) -> LossAndMetrics:
  """SigLIP pairwise sigmoid loss with learnable temperature and bias.

  za, zb: [B_local, D] (L2-normalized here). t = exp(t_param) (init log 10), b = b_param
  (init -10). With z_ij = +1 for the positive pair i == j and -1 otherwise, over the global
  batch of size N:
    L = -1/N sum_{i,j} log sigmoid(z_ij (t za_i . zb_j + b)).
  Sharded: a ppermute ring over `axis_name` (see the module docstring); per-device memory is
  O(B_local^2 + B_local D) whatever the device count.
  Metrics: loss, i2t_accuracy / t2i_accuracy (top-1 retrieval over the global batch), t, b.
  """
  za, zb = l2_normalize(za), l2_normalize(zb)
  t = jnp.exp(jnp.asarray(t_param, jnp.float32))
  b = jnp.asarray(b_param, jnp.float32)
  if axis_name is None:
    total, logits = _pair_loss_sum(za, zb, t, b, True)
    labels = jnp.arange(za.shape[0])
    n_global = za.shape[0]
    hits_ab = jnp.sum((jnp.argmax(logits, axis=1) == labels).astype(jnp.float32))
    hits_ba = jnp.sum((jnp.argmax(logits, axis=0) == labels).astype(jnp.float32))
  else:
    n_global = za.shape[0] * jax.lax.axis_size(axis_name)
    total, hits_ab, hits_ba = _sigmoid_ring(
        za, zb, _varying(t, axis_name), _varying(b, axis_name), axis_name)
    total, hits_ab, hits_ba = jax.lax.psum((total, hits_ab, hits_ba), axis_name)
  loss = total / n_global
  metrics = {"loss": loss, "i2t_accuracy": jax.lax.stop_gradient(hits_ab) / n_global,
             "t2i_accuracy": jax.lax.stop_gradient(hits_ba) / n_global, "t": t, "b": b}
  return loss, metrics


# ------------------------------------------------------------------------------ masking losses

def _weighted_mean(x, weights):
  total = jnp.sum(weights)
  return jnp.sum(x * weights) / jnp.where(total > 0, total, 1.0)


def mlm_loss(logits, targets, weights) -> LossAndMetrics:
  """Masked language modelling: cross entropy over the masked positions.

  logits [..., L, V]; targets int [..., L]; weights [..., L] (1 where masked, else 0).
  L = sum_i w_i (logsumexp(logits_i) - logits_i[target_i]) / sum_i w_i (0 if nothing masked).
  Metrics: loss, accuracy (argmax == target over masked positions).
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  correct = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  ce = jax.nn.logsumexp(logits, axis=-1) - correct
  loss = _weighted_mean(ce, weights)
  hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return loss, {"loss": loss, "accuracy": _weighted_mean(hits, weights)}


def mim_loss(pred, target, weights, *, norm_pix: bool = True, eps: float = 1e-6
             ) -> LossAndMetrics:
  """MAE-style masked regression (pixels of image / video / audio patches, or features).

  pred, target [B, N, P] (P = values per patch, see mmjax.tokenizers.patchify_*); weights [B, N]
  (1 for masked patches). With norm_pix each target patch is normalized over its own P values:
  (x - mean) / sqrt(var + eps). Use norm_pix=False for region / frame / generic features.
  L = sum_{b,n} w_bn mean_p (pred - target)^2 / sum w. Metrics: loss.
  """
  pred = pred.astype(jnp.float32)
  target = jax.lax.stop_gradient(target.astype(jnp.float32))
  if norm_pix:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True)
    target = (target - mean) * jax.lax.rsqrt(var + eps)
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
  loss = _weighted_mean(per_patch, weights.astype(jnp.float32))
  return loss, {"loss": loss}


# ------------------------------------------------------------------------------ describing

def caption_loss(logits, targets, weights) -> LossAndMetrics:
  """Captioning / prefix-LM: next-token cross entropy of the decoder over real targets.

  logits [B, L', V]; targets int [B, L'] (the caption shifted by one); weights [B, L'] (1 on
  real target tokens, the end token included; prefix-LM: suffix targets only).
  L = sum_t w_t (logsumexp(logits_t) - logits_t[target_t]) / sum_t w_t.
  Metrics: loss, accuracy (next-token argmax), perplexity = exp(loss)."""
  loss, metrics = mlm_loss(logits, targets, weights)
  return loss, dict(metrics, perplexity=jnp.exp(jax.lax.stop_gradient(loss)))


# ------------------------------------------------------------------------------ distillation

def self_distillation_loss(student, teacher, weights, student_temp: float, teacher_temp: float
                           ) -> LossAndMetrics:
  """Distillation from a teacher's logits (DINO / iBOT form; SILC, TIPS).

  student, teacher [..., K] logits; weights [...] (1 on the rows that count). The teacher is
  centred by its weighted mean over the rows, c, and sharpened; no gradient reaches it:
    p = softmax((teacher - c) / teacher_temp),  q = log_softmax(student / student_temp)
    L = sum w (-sum_k p_k q_k) / sum w.
  Metrics: loss, agreement (argmax student == argmax p), teacher_entropy (mean of H(p))."""
  student, teacher = student.astype(jnp.float32), teacher.astype(jnp.float32)
  w = weights.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher)
  center = jnp.sum(t * w[..., None], axis=tuple(range(t.ndim - 1))) / jnp.maximum(jnp.sum(w), 1)
  p = jax.nn.softmax((t - center) / teacher_temp, axis=-1)
  q = jax.nn.log_softmax(student / student_temp, axis=-1)
  ce = -jnp.sum(p * q, axis=-1)
  loss = _weighted_mean(ce, w)
  agree = (jnp.argmax(student, -1) == jnp.argmax(p, -1)).astype(jnp.float32)
  entropy = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)
  return loss, {"loss": loss, "agreement": _weighted_mean(agree, w),
                "teacher_entropy": _weighted_mean(entropy, w)}


# ------------------------------------------------------------------------------ ordering

def order_loss(logits, targets, weights) -> LossAndMetrics:
  """Frame / sentence ordering: classify each shuffled item's original index.

  logits [B, N, K] (K = tubelet groups, or text segments); targets int [B, N] (the original
  index, mmjax.ordering); weights [B, N] (1 on the shuffled groups / body tokens).
  L = sum w CE(logits, target) / sum w. Metrics: loss, accuracy."""
  return mlm_loss(logits, targets, weights)


# ------------------------------------------------------------------------------ regions

def mrc_loss(logits, target_dist, weights) -> LossAndMetrics:
  """Masked region classification against the detector (UNITER's MRC-kl).

  logits [B, N, C]; target_dist [B, N, C] the detector's class distribution of each region;
  weights [B, N] (1 on masked regions).
  L = sum_n w_n KL(p_n || softmax(logits_n)) / sum w,  KL(p||q) = sum_c p_c (log p_c - log q_c).
  Metrics: loss, accuracy (argmax agrees with the detector's top class)."""
  logits = logits.astype(jnp.float32)
  p = jax.lax.stop_gradient(target_dist.astype(jnp.float32))
  logq = jax.nn.log_softmax(logits, axis=-1)
  kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - logq), 0.0), axis=-1)
  w = weights.astype(jnp.float32)
  loss = _weighted_mean(kl, w)
  hits = (jnp.argmax(logits, -1) == jnp.argmax(p, -1)).astype(jnp.float32)
  return loss, {"loss": loss, "accuracy": _weighted_mean(hits, w)}


def mrfr_loss(pred, features, weights) -> LossAndMetrics:
  """Masked region feature regression (UNITER's MRFR): mean squared error to the masked
  regions' detector features. pred, features [B, N, F]; weights [B, N].
  L = sum_n w_n mean_f (pred - feature)^2 / sum w. Metrics: loss."""
  return mim_loss(pred, features, weights, norm_pix=False)


# ------------------------------------------------------------------------------ matching

def itm_loss(logits, labels) -> LossAndMetrics:
  """Image-text matching: 2-way cross entropy. logits [M, 2]; labels int [M] in {0, 1}
  (1 = matched pair). L = mean_m (logsumexp(logits_m) - logits_m[label_m]).
  Metrics: loss, accuracy. See masking.itm_hard_negatives for how the M = 3B pairs are built."""
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  correct = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - correct)
  acc = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, {"loss": loss, "accuracy": acc}


# ------------------------------------------------------------------------------ combining

def combine_losses(losses: Mapping[str, LossAndMetrics], weights: Mapping[str, float]
                   ) -> Tuple[jax.Array, Metrics]:
  """total = sum_k weights[k] * loss_k over the objectives with a positive weight.

  losses: name -> (loss, metrics); weights: name -> float (a missing name is an error; extra
  names are ignored). Returns (total, metrics) with metrics '<name>/<metric>' per kept objective
  and 'loss' = total. Objectives weighted 0 are dropped (neither summed nor reported).
  """
  missing = [k for k in losses if k not in weights]
  if missing:
    raise ValueError(f"combine_losses: no weight for {missing}; add them to the weights dict")
  total = jnp.zeros((), jnp.float32)
  flat: Metrics = {}
  for name, (loss, metrics) in losses.items():
    w = float(weights[name])
    if w == 0.0:
      continue
    total = total + w * loss.astype(jnp.float32)
    flat[f"{name}/loss"] = loss
    for key, value in metrics.items():
      flat[f"{name}/{key}"] = value
  flat["loss"] = total
  return total, flat


def global_loss(fn, mesh, *arrays, scalars=()):
  """Run a batch-level loss over the global batch: inside shard_map over the batch axes when
  the batch is split across devices (fn receives axis_name), else directly."""
  from mmjax import sharding  # pylint: disable=import-outside-toplevel
  axes = tuple(a for a in sharding.BATCH_AXES if mesh.shape[a] > 1) if mesh is not None else ()
  if not axes:
    return fn(*arrays, *scalars, axis_name=None)
  spec = jax.sharding.PartitionSpec(axes)
  mapped = jax.shard_map(
      functools.partial(fn, axis_name=axes if len(axes) > 1 else axes[0]), mesh=mesh,
      in_specs=(spec,) * len(arrays) + (jax.sharding.PartitionSpec(),) * len(scalars),
      out_specs=(jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec()), check_vma=False)
  return mapped(*arrays, *scalars)
