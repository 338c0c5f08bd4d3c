"""Ordering pretext tasks: shuffle the order of a sequence and predict the original order.

The survey's ordering family; two members here, both as random inputs plus targets:

frame order modelling (HERO): in each example k = max(2, round(ratio * G)) (at most G) of
  the G tubelet groups of a video are chosen at random and permuted uniformly among
  themselves (a chosen group may land on its own slot); the rest stay in place.
  frame_permutation -> perm int32 [B, G], shuffled bool [B, G]; perm[b, j] = the ORIGINAL
  group of the content placed at slot j (the target of slot j, weighted by shuffled).
  permute_frames applies it to video [B, T, ...], G = T / t groups of t consecutive frames,
  i.e. the time-major token groups of mmjax.tokenizers.patchify_video (token index =
  g * (H/p * W/p) + spatial index). invert(perm) undoes it.

sentence (segment) ordering: the body of a text row (valid positions minus the first
  num_prefix, [CLS], and the last num_suffix, [SEP]) is cut into K contiguous chunks of
  near-equal length, body position i in chunk floor(i * K / n_body), and the chunks are
  permuted uniformly. segment_permutation -> gather, targets, weights, all [B, L]:
  take_along_axis(ids, gather, 1) is the shuffled row ([CLS], [SEP] and padding in place);
  targets[b, p] = the original chunk (0..K-1) of the token now at p; weights 1 on the body.
  Rows with n_body < K are left as they are, with zero weights.

All functions are jit-friendly (shapes depend only on input shapes and static arguments) and
vmapped over the batch, one key per example split from rng.
"""
from __future__ import annotations

import math
from typing import Tuple

import jax
import jax.numpy as jnp


def invert(perm):
  """Inverse permutation over the last axis: invert(perm)[..., perm[..., j]] = j."""
  return jnp.argsort(jnp.asarray(perm), axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------ frames

def num_shuffled_groups(num_groups: int, ratio: float) -> int:
  """k = max(2, round(ratio * G)) capped at G (round half up)."""
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"ratio={ratio} must be in [0, 1]")
  return min(int(num_groups), max(2, int(math.floor(ratio * num_groups + 0.5))))


def frame_permutation(rng, batch_size: int, num_groups: int, ratio: float
                      ) -> Tuple[jax.Array, jax.Array]:
  """HERO frame order: (perm int32 [B, G], shuffled bool [B, G]); see the module docstring."""
  if num_groups < 1:
    raise ValueError(f"num_groups={num_groups} must be at least 1")
  k = num_shuffled_groups(num_groups, ratio)

  def one(key):
    order = jax.random.permutation(key, num_groups)
    chosen = order[:k]                  # k random groups, in random order
    slots = jnp.sort(chosen)            # the slots they occupy
    perm = jnp.arange(num_groups, dtype=jnp.int32).at[slots].set(chosen.astype(jnp.int32))
    shuffled = jnp.zeros((num_groups,), bool).at[slots].set(True)
    return perm, shuffled

  return jax.vmap(one)(jax.random.split(rng, batch_size))


def permute_frames(video, perm, tubelet_t: int):
  """video [B, T, ...] -> same shape, the t frames of group perm[b, j] moved to slot j."""
  video = jnp.asarray(video)
  perm = jnp.asarray(perm)
  t_len, groups = video.shape[1], perm.shape[-1]
  if groups * tubelet_t != t_len:
    raise ValueError(f"video has {t_len} frames but perm has {groups} groups of "
                     f"tubelet_t={tubelet_t} frames")
  frames = jnp.arange(t_len)
  src = perm[:, frames // tubelet_t] * tubelet_t + frames % tubelet_t   # [B, T]
  return jax.vmap(lambda v, i: v[i])(video, src)


# ------------------------------------------------------------------------------ text

def segment_permutation(rng, valid, num_segments: int, *, num_prefix: int = 1,
                        num_suffix: int = 1) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Sentence ordering: (gather int32, targets int32, weights float32), all [B, L].

  valid: bool [B, L] (ids != pad). See the module docstring for the definitions.
  """
  if num_segments < 1:
    raise ValueError(f"num_segments={num_segments} must be at least 1")
  valid = jnp.asarray(valid, bool)
  length = valid.shape[-1]
  k = int(num_segments)
  pos = jnp.arange(length, dtype=jnp.int32)

  def one(key, v):
    vidx = jnp.cumsum(v.astype(jnp.int32)) - 1           # index among the valid positions
    n_body = jnp.maximum(jnp.sum(v) - num_prefix - num_suffix, 0)
    body = v & (vidx >= num_prefix) & (vidx < num_prefix + n_body)
    ok = n_body >= k
    bidx = jnp.where(body, vidx - num_prefix, 0)          # index within the body
    chunk = jnp.where(body, bidx * k // jnp.maximum(n_body, 1), 0)
    slot_of_chunk = invert(jax.random.permutation(key, k))
    # Body sources in output order: by new slot of their chunk, then by position.
    src = jnp.argsort(jnp.where(body, slot_of_chunk[chunk] * length + pos,
                                k * length + pos)).astype(jnp.int32)
    use = body & ok
    gather = jnp.where(use, src[bidx], pos)
    targets = jnp.where(use, chunk[gather], 0)
    return gather, targets.astype(jnp.int32), use.astype(jnp.float32)

  return jax.vmap(one)(jax.random.split(rng, valid.shape[0]), valid)
