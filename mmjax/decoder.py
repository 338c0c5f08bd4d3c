"""The captioning decoder (survey: the "describing" family of pretext tasks; CoCa, CapPa).

A causal text decoder that cross-attends to another modality's tokens (the memory: image,
video or audio tower outputs). Each layer is pre-LN:

  x <- x + MHSA_causal(LN(x))                 self-attention over the caption so far
  x <- x + MHSA(Q=LN(x), K=V=LN(M))           cross-attention to the memory M [B, Nm, Dm]
  x <- x + MLP(LN(x))

then LN and a linear head to the vocabulary: logits [B, n, V]. The input tokens come from the
text modality's own embedder (CoCa: the contrastive text tower and the decoder share the token
and position tables). A memory of another width is projected to the decoder's width first.

Decoding: `init_cache(batch, slots)` gives per-layer key/value caches [B, S, H, D]; a call with
`cache=` takes the next n tokens (n = 1 when generating), writes their keys and values at the
cache index, and returns (logits, cache'). Teacher-forced logits equal the cached ones step by
step (tests/test_captioning.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mmjax.layers import BlockConfig, Mlp, dropout, layer_norm, mha

Cache = Tuple[Tuple[Any, Any, Any], ...]  # per layer (k [B, S, H, D], v [B, S, H, D], index)


class DecoderBlock(nn.Module):
  """One decoder layer (module docstring). x [B, n, E], memory [B, Nm, E], memory_mask [B, Nm]
  -> (x [B, n, E], cache' or None)."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x, memory, memory_mask, cache=None):
    cfg = self.cfg
    h = layer_norm(cfg, "ln_self")(x)
    attn = mha(cfg, "self_attn")
    if cache is None:
      h, new_cache = attn(h, causal=True), None
    else:
      h, new_cache = attn(h, cache=cache)
    x = x + dropout(self, cfg.dropout, h)
    h = mha(cfg, "cross_attn")(layer_norm(cfg, "ln_cross_q")(x),
                                layer_norm(cfg, "ln_cross_kv")(memory), kv_mask=memory_mask)
    x = x + dropout(self, cfg.dropout, h)
    x = x + dropout(self, cfg.dropout, Mlp(cfg, name="mlp")(layer_norm(cfg, "ln_mlp")(x)))
    return x, new_cache


class CaptionDecoder(nn.Module):
  """`depth` DecoderBlocks, final LN, vocabulary head.

  tokens [B, n, E] (embedded caption ids), memory [B, Nm, Dm], memory_mask [B, Nm] ->
  (logits [B, n, V] float32, cache' or None)."""
  cfg: BlockConfig
  depth: int
  vocab_size: int

  @nn.compact
  def __call__(self, tokens, memory, memory_mask, cache: Optional[Cache] = None):
    cfg = dataclasses.replace(self.cfg, causal=False)
    if memory.shape[-1] != cfg.width:
      memory = nn.Dense(cfg.width, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        name="memory_proj", kernel_init=nn.with_logical_partitioning(
                            nn.initializers.xavier_uniform(), (None, "embed")))(memory)
    x, new = tokens.astype(cfg.dtype), []
    for i in range(self.depth):
      x, c = DecoderBlock(cfg, name=f"layer_{i}")(x, memory, memory_mask,
                                                  None if cache is None else cache[i])
      new.append(c)
    x = layer_norm(cfg, "ln_final")(x)
    logits = nn.Dense(self.vocab_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      name="head", kernel_init=nn.with_logical_partitioning(
                          nn.initializers.lecun_normal(), ("embed", "vocab")))(x)
    return logits.astype(jnp.float32), (None if cache is None else tuple(new))


def init_cache(cfg: BlockConfig, depth: int, batch: int, slots: int) -> Cache:
  """Empty caches for `depth` layers: zeros [batch, slots, H, D] and index 0."""
  shape = (batch, slots, cfg.num_heads, cfg.head_dim)
  zero = jnp.zeros(shape, cfg.dtype)
  return tuple((zero, zero, jnp.zeros((), jnp.int32)) for _ in range(depth))


def teacher_forcing(ids, token_mask) -> Tuple[Any, Any, Any]:
  """Caption ids [B, L] ([CLS] caption [SEP] PAD...) and the tokens the model sees [B, L] ->
  (inputs [B, L-1], targets [B, L-1], weights [B, L-1]): position t reads ids[t] and predicts
  ids[t+1]; weight 1 where that target is a real token (the end token counts: the model
  learns to stop)."""
  return ids[:, :-1], ids[:, 1:], token_mask[:, 1:].astype(jnp.float32)


def prefix_positions(prefix, length: int):
  """Prefix-LM positions [B, L] of text whose first `prefix` [B] tokens are the prefix: 0 on
  the prefix, then 1, 2, ... on the suffix, pos_j = max(j - prefix + 1, 0). With positions 0
  on every other modality's tokens, 'key j visible to query i iff pos_j <= pos_i' is exactly
  the prefix-LM mask: [other modality; text prefix] attend fully among themselves, the suffix
  attends to all of that and causally to itself."""
  j = jnp.arange(length, dtype=jnp.int32)[None, :]
  return jnp.maximum(j - prefix.astype(jnp.int32)[:, None] + 1, 0)


__all__: Sequence[str] = ("CaptionDecoder", "DecoderBlock", "init_cache", "teacher_forcing",
                          "prefix_positions")
