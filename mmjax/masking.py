"""Masking for the masked-modelling objectives, and the patch layout of their targets.

All functions are jit-friendly: shapes depend only on input shapes, never on random draws.

Patch order (shared with mmjax.tokenizers, so token n of an embedder is patch n here):
  patches are numbered row-major over the patch grid -- time first, then height, then width
  (spectrograms: time, then frequency); inside a patch the values are flattened row-major in
  the same order with channels last: image (dy, dx, c), video (dt, dy, dx, c), audio (dt, df).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp

Size2 = Union[int, Sequence[int]]


def _pair(p: Size2) -> Tuple[int, int]:
  return (int(p), int(p)) if isinstance(p, int) else tuple(int(v) for v in p)


def _check_divisible(name, shape, patch):
  if any(s % p for s, p in zip(shape, patch)):
    raise ValueError(f"{name} of shape {tuple(shape)} is not divisible by patch {tuple(patch)}; "
                     "resize/crop the input or pick a patch size that divides it")


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
  Returns (masked_ids [..., L] like ids, targets = ids (original), weights float32 [..., L],
  1 at the chosen positions) -- the inputs of objectives.mlm_loss.
  """
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


def patchify(images, patch: Size2):
  """[B, H, W, C] -> [B, (H/ph)(W/pw), ph*pw*C]; patches row-major, values (dy, dx, c)."""
  ph, pw = _pair(patch)
  b, h, w, c = images.shape
  _check_divisible("image", (h, w), (ph, pw))
  x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def tubeletify(video, t: int, p: Size2):
  """[B, T, H, W, C] -> [B, (T/t)(H/ph)(W/pw), t*ph*pw*C]; order (time, height, width),
  values (dt, dy, dx, c)."""
  ph, pw = _pair(p)
  b, tt, h, w, c = video.shape
  _check_divisible("video", (tt, h, w), (t, ph, pw))
  x = video.reshape(b, tt // t, t, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, (tt // t) * (h // ph) * (w // pw), t * ph * pw * c)


def spec_patchify(spec, pt: int, pf: int):
  """[B, T, F] -> [B, (T/pt)(F/pf), pt*pf]; order (time, frequency), values (dt, df)."""
  b, t, f = spec.shape
  _check_divisible("spectrogram", (t, f), (pt, pf))
  x = spec.reshape(b, t // pt, pt, f // pf, pf).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, (t // pt) * (f // pf), pt * pf)
