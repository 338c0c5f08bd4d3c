"""Masking and negative sampling: the random inputs of the pretext tasks.

bert_mask / random_patch_mask build the masked-modelling inputs; itm_hard_negatives draws the
matching task's hard negatives from the alignment similarity (ALBEF / BLIP).

All functions are jit-friendly: shapes depend only on input shapes, never on random draws.
MAE masks are over the patches of mmjax.tokenizers.patchify_* (its docstring gives the patch
order), which produce both the embedders' tokens and the reconstruction targets.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp


def _rank_lt(rng, eligible, count):
  """Pick `count[row]` positions uniformly at random among the eligible ones of each row."""
  scores = jnp.where(eligible, jax.random.uniform(rng, eligible.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return (rank < count[..., None]) & eligible


def _round_half_up(x):
  return jnp.floor(x + 0.5).astype(jnp.int32)


# ------------------------------------------------------------------------------ text

def bert_mask(rng, ids, *, mask_id: int, vocab_size: int, mask_prob: float = 0.15,
              special_ids: Sequence[int] = (), valid_mask=None,
              random_prob: float = 0.1, keep_prob: float = 0.1):
  """BERT masking: choose positions, then replace 80% by [MASK], 10% by a random token, 10% kept.

  ids: int [..., L]; valid_mask: bool [..., L] (None = all valid). In each row exactly
  max(1, round(mask_prob * n)) of the n valid, non-special positions are chosen (0 if n = 0).
  Random replacements are uniform over the ids in [0, vocab_size) that are not special.
  mask_id, vocab_size and special_ids are the tokenizer's (mmjax.data.text), never assumed.
  Returns (masked_ids [..., L] like ids, targets = ids (original), weights float32 [..., L],
  1 at the chosen positions) -- the inputs of objectives.mlm_loss.
  """
  if not 0 <= int(mask_id) < vocab_size:
    raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size}); use the "
                     "tokenizer's [MASK] id and a vocab_size that holds it")
  if int(mask_id) not in {int(s) for s in special_ids} and special_ids:
    raise ValueError(f"mask_id={mask_id} is not among special_ids={tuple(special_ids)}; a "
                     "[MASK] must never be drawn as a random replacement: add it")
  ids = jnp.asarray(ids)
  specials = sorted({int(s) for s in special_ids})
  eligible = jnp.ones(ids.shape, bool) if valid_mask is None else jnp.asarray(valid_mask, bool)
  for s in specials:
    eligible &= ids != s
  n = jnp.sum(eligible, axis=-1)
  count = jnp.where(n > 0, jnp.maximum(1, _round_half_up(mask_prob * n)), 0)
  r_pick, r_kind, r_tok = jax.random.split(rng, 3)
  chosen = _rank_lt(r_pick, eligible, count)

  u = jax.random.uniform(r_kind, ids.shape)
  to_mask = chosen & (u < 1.0 - random_prob - keep_prob)
  to_random = chosen & (u >= 1.0 - random_prob - keep_prob) & (u < 1.0 - keep_prob)
  in_range = [s for s in specials if 0 <= s < vocab_size]
  tok = jax.random.randint(r_tok, ids.shape, 0, vocab_size - len(in_range))
  for s in in_range:  # map [0, V - #specials) monotonically onto the non-special ids
    tok = tok + (tok >= s)
  masked = jnp.where(to_mask, mask_id, jnp.where(to_random, tok.astype(ids.dtype), ids))
  return masked.astype(ids.dtype), ids, chosen.astype(jnp.float32)


# ------------------------------------------------------------------------------ patches

def random_patch_mask(rng, batch: int, num_patches: int, mask_ratio: float, valid_mask=None):
  """MAE random masking: bool [batch, num_patches], True = masked (to be predicted).

  Each row masks exactly round(mask_ratio * num_patches) patches, chosen uniformly; with a
  valid_mask [batch, num_patches] only valid patches are masked, round(mask_ratio * n_valid)
  of them per row (round half up).
  """
  if valid_mask is None:
    eligible = jnp.ones((batch, num_patches), bool)
  else:
    eligible = jnp.asarray(valid_mask, bool)
    if eligible.shape != (batch, num_patches):
      raise ValueError(f"valid_mask has shape {eligible.shape}, expected "
                       f"{(batch, num_patches)}")
  count = _round_half_up(mask_ratio * jnp.sum(eligible, axis=-1))
  return _rank_lt(rng, eligible, count)


# ------------------------------------------------------------------------------ negatives

def global_rows(n_local: int, axis_name):
  """Global indices of this device's rows: axis_index * n_local + arange(n_local)."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n_local
  return offset + jnp.arange(n_local)


def itm_hard_negatives(rng, sim, *, sim_ba=None, axis_name: Optional[object] = None
                       ) -> Tuple[jax.Array, jax.Array]:
  """Hard negatives for ITM (ALBEF / BLIP): sample from softmax(sim) with the positive zeroed.

  sim: [B_local, B_global] similarity logits of local A rows against all B (pass the scaled
  logits, e.g. logit_scale * cos, since softmax over raw cosines is nearly uniform).
  sim_ba: [B_local, B_global] local B rows against all A; defaults to sim.T (unsharded only).
  Returns (neg_b, neg_a), int32 [B_local] global indices, no gradient:
    neg_b[i] ~ softmax_j(sim[i, j]), j != global index of row i   (a negative B for each A)
    neg_a[j] ~ softmax_i(sim_ba[j, i]), i != global index of row j (a negative A for each B)
  Needs a global batch of at least 2. Sharded, rng is folded with the device index.

  A model then scores 3B pairs with its matching head:
    (A_i, B_i)            positives,       labels 1
    (A_i, B_neg_b[i])     hard-negative B, labels 0
    (A_neg_a[j], B_j)     hard-negative A, labels 0
  i.e. inputs A = concat(A, A, A[neg_a]), B = concat(B, B[neg_b], B),
  labels = [1]*B + [0]*2B, and itm_loss(head_logits [3B, 2], labels).
  """
  sim = jax.lax.stop_gradient(jnp.asarray(sim, jnp.float32))
  if sim_ba is None:
    if axis_name is not None:
      raise ValueError("itm_hard_negatives with axis_name needs sim_ba (local B rows against "
                       "all A); the transpose of local rows is not available")
    sim_ba = sim.T
  sim_ba = jax.lax.stop_gradient(jnp.asarray(sim_ba, jnp.float32))
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  rows = global_rows(sim.shape[0], axis_name)
  positive = rows[:, None] == jnp.arange(sim.shape[1])[None, :]
  r_b, r_a = jax.random.split(rng)
  neg_b = jax.random.categorical(r_b, jnp.where(positive, -jnp.inf, sim), axis=-1)
  neg_a = jax.random.categorical(r_a, jnp.where(positive, -jnp.inf, sim_ba), axis=-1)
  return neg_b.astype(jnp.int32), neg_a.astype(jnp.int32)
