"""Cross-modal interaction (survey Table 2): eight fusion designs behind one interface.

Input: a mapping modality -> (tokens [B, N_m, D], mask [B, N_m]) for two or more modalities,
already carrying position and modality-type embeddings (mmjax/tokenizers.py).
Output (`FusionOutput`): per-token outputs and masks per modality, pooled per stream, and the
pooled joint representation.

Notation: Tf = a stack of transformer layers, C = concatenation on the token axis.

  early_sum           Z = Tf(sum_m a_m * Z_m)                       aligned tokens only
  early_concat        Z = Tf(C(Z_A, Z_B))                            single stream
  hier_multi_to_one   Z = Tf3(C(Tf1(Z_A), Tf2(Z_B)))
  hier_one_to_multi   (Z_A, Z_B) = split(Tf1(C(Z_A, Z_B))); Z_A = Tf2(Z_A); Z_B = Tf3(Z_B)
  cross_attention     Z_A += MHSA(Q_A, K_B, V_B); Z_B += MHSA(Q_B, K_A, V_A)  (in place, both
                      streams read the other's input states; >2 modalities: K, V = C(others))
  cross_to_concat     the cross-attention streams, then Z = Tf(C(Z_A, Z_B))
  dual_encoder        Z_A = Tf1(Z_A); Z_B = Tf2(Z_B); no interaction (late fusion)
  bottleneck          per layer and modality [Z_m; B_m] = Tf_m([Z_m; B]); B = mean_m B_m (MBT)

Every design first runs optional per-modality towers (`unimodal_depth`; for hier_multi_to_one
and dual_encoder they are Tf1/Tf2), available separately through `encode` so objectives can
use the unimodal representations (ALBEF-style contrastive) and run `interact` on re-paired
inputs (ITM hard negatives) without re-encoding.

Masks: padding never changes a valid token's output. An absent modality (all masked) gives
defined outputs: attention with no valid key outputs zeros; pooled means over no token are 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mmjax.layers import BlockConfig, CrossBlock, Encoder, EncoderBlock, masked_mean
from mmjax.layers import _layer_norm, _mha  # pylint: disable=protected-access

FUSIONS = ("early_sum", "early_concat", "hier_multi_to_one", "hier_one_to_multi",
           "cross_attention", "cross_to_concat", "dual_encoder", "bottleneck")
TWO_STREAM = ("cross_attention", "hier_one_to_multi", "dual_encoder", "bottleneck")

Tokens = Tuple[Any, Any]  # (tokens [B, N, D], mask [B, N])


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  """Stage depths are separate, so variants compare at matched parameters or FLOPs."""
  name: str = "early_concat"
  unimodal_depth: Tuple[Tuple[str, int], ...] = ()  # per-modality tower depth (Tf1, Tf2)
  joint_depth: int = 2        # joint single stream (Tf / Tf3) or bottleneck fusion layers
  post_depth: int = 0         # hier_one_to_multi's per-stream stage (Tf2, Tf3)
  cross_depth: int = 2        # cross_attention / cross_to_concat co-attention layers
  cross_mode: str = "pure"    # pure (cross -> FFN) | self_cross (self -> cross -> FFN)
  share_cross: bool = False   # LXMERT: one cross-attention serves every direction
  early_sum_weights: str = "fixed"  # fixed (a = b = 1) | learned
  early_sum_align: str = "none"     # none (equal lengths required) | pad (to the longest)
  num_bottlenecks: int = 4
  pool: str = "cls"           # cls (first token of the stream) | mean (over valid tokens)
  pool_combine: str = "concat"  # two-stream joint: concat | product | sum

  def depth_of(self, modality: str) -> int:
    return dict(self.unimodal_depth).get(modality, 0)


def validate(cfg: FusionConfig, modalities) -> None:
  """One-line errors for impossible fusion settings (before anything compiles)."""
  if cfg.name not in FUSIONS:
    raise ValueError(f"unknown model.fusion={cfg.name!r}; choose one of {', '.join(FUSIONS)}")
  if len(modalities) < 2:
    raise ValueError(f"fusion {cfg.name} needs two or more modalities, got {list(modalities)}")
  if cfg.pool not in ("cls", "mean"):
    raise ValueError(f"unknown pool {cfg.pool!r}; use 'cls' or 'mean'")
  if cfg.pool_combine not in ("concat", "product", "sum"):
    raise ValueError(f"unknown pool_combine {cfg.pool_combine!r}; use concat, product or sum")
  if cfg.early_sum_align not in ("none", "pad"):
    raise ValueError(f"unknown early_sum_align {cfg.early_sum_align!r}; use 'none' or 'pad'")
  if cfg.early_sum_weights not in ("fixed", "learned"):
    raise ValueError(f"unknown early_sum_weights {cfg.early_sum_weights!r}; "
                     "use 'fixed' or 'learned'")
  if cfg.name in ("dual_encoder", "hier_multi_to_one"):
    shallow = [m for m in modalities if cfg.depth_of(m) <= 0]
    if shallow:
      raise ValueError(f"{cfg.name} needs a unimodal tower for every modality; set "
                       f"depth.unimodal > 0 for {shallow}")
  if cfg.name == "bottleneck" and cfg.num_bottlenecks <= 0:
    raise ValueError("bottleneck fusion needs num_bottlenecks > 0")


def pool_tokens(tokens, mask, how: str):
  """[B, N, D], [B, N] -> [B, D]: the first valid token ([CLS] of the first modality present),
  or the mean over valid tokens. A row with no valid token pools to 0."""
  if how == "cls":
    first = jnp.argmax(mask, axis=1)
    picked = jnp.take_along_axis(tokens, first[:, None, None], axis=1)[:, 0]
    return picked * jnp.any(mask, axis=1, keepdims=True).astype(tokens.dtype)
  return masked_mean(tokens, mask)


def combine_pooled(pooled: Mapping[str, Any], how: str):
  vals = [pooled[k] for k in sorted(pooled)]
  if how == "concat":
    return jnp.concatenate(vals, axis=-1)
  out = vals[0]
  for v in vals[1:]:
    out = out * v if how == "product" else out + v
  return out


def _concat(streams: Mapping[str, Tokens], order):
  toks = jnp.concatenate([streams[m][0] for m in order], axis=1)
  mask = jnp.concatenate([streams[m][1] for m in order], axis=1)
  return toks, mask


def _split(tokens, streams: Mapping[str, Tokens], order) -> Dict[str, Any]:
  out, start = {}, 0
  for m in order:
    n = streams[m][0].shape[1]
    out[m] = tokens[:, start:start + n]
    start += n
  return out


class Fusion(nn.Module):
  """All eight designs. `modalities` fixes the order of concatenation.

  __call__(inputs) = interact(encode(inputs)) -> dict with
    tokens   {modality: [B, N_m, D]}   per-token outputs (early_sum: the shared stream)
    masks    {modality: [B, N_m]}
    pooled   {stream: [B, D]}           'joint' for single-stream designs, else per modality
    joint    [B, D'] pooled joint representation (D' = M*D for pool_combine=concat)
  """
  cfg: FusionConfig
  block: BlockConfig
  modalities: Tuple[str, ...]
  tower_blocks: Tuple[Tuple[str, BlockConfig], ...] = ()  # towers with their own width

  def setup(self):
    cfg, blk, mods = self.cfg, self.block, self.modalities
    own = dict(self.tower_blocks)
    self.towers = {m: Encoder(own.get(m, blk), cfg.depth_of(m), name=f"tower_{m}")
                   for m in mods}
    name = cfg.name
    # A tower narrower or wider than the interaction: Z_m W_m into model width (METER-style).
    self.tower_proj = {m: nn.Dense(
        blk.width, dtype=blk.dtype, param_dtype=blk.param_dtype, name=f"tower_proj_{m}",
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                 (None, "embed")))
                       for m in mods if name != "dual_encoder"
                       and own.get(m, blk).width != blk.width}
    if name in ("early_sum", "early_concat", "hier_multi_to_one", "hier_one_to_multi",
                "cross_to_concat"):
      self.joint = Encoder(blk, cfg.joint_depth, name="joint")
    if name == "early_sum" and cfg.early_sum_weights == "learned":
      self.sum_weights = self.param("sum_weights", nn.initializers.ones, (len(mods),))
    if name == "hier_one_to_multi":
      self.post = {m: Encoder(blk, cfg.post_depth, name=f"post_{m}") for m in mods}
    if name in ("cross_attention", "cross_to_concat"):
      self.shared_cross = _mha(blk, "shared_cross_attn") if cfg.share_cross else None
      self.cross = [{m: CrossBlock(blk, cfg.cross_mode, name=f"cross_{i}_{m}") for m in mods}
                    for i in range(cfg.cross_depth)]
      self.cross_norm = {m: _layer_norm(blk, f"cross_ln_{m}") for m in mods}
    if name == "bottleneck":
      self.bottleneck_init = self.param(
          "bottleneck_tokens", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                            (None, "embed")),
          (cfg.num_bottlenecks, blk.width), blk.param_dtype)
      self.fusion_layers = [{m: EncoderBlock(blk, name=f"fusion_{i}_{m}") for m in mods}
                            for i in range(cfg.joint_depth)]
      self.fusion_norm = {m: _layer_norm(blk, f"fusion_ln_{m}") for m in mods}

  def __call__(self, inputs: Mapping[str, Tokens]):
    return self.interact(self.encode(inputs))

  def encode(self, inputs: Mapping[str, Tokens]) -> Dict[str, Tokens]:
    """Per-modality towers (identity where depth is 0) for the modalities present, then
    tower_proj_<m> where the tower has its own width. No modality sees another."""
    out = {}
    for m in self.modalities:
      if m in inputs:
        tokens = self.towers[m](*inputs[m])
        out[m] = (self.tower_proj[m](tokens) if m in self.tower_proj else tokens, inputs[m][1])
    return out

  def interact(self, streams: Mapping[str, Tokens]):
    name, mods = self.cfg.name, self.modalities
    missing = [m for m in mods if m not in streams]
    if missing:
      raise ValueError(f"fusion inputs lack modalities {missing}; got {sorted(streams)} (mark "
                       "an absent modality with <modality>_valid=False instead of dropping it)")
    if name == "early_sum":
      return self._early_sum(streams)
    if name in ("early_concat", "hier_multi_to_one"):
      toks, mask = _concat(streams, mods)
      out = self.joint(toks, mask)
      return self._single_stream(out, mask, streams)
    if name == "hier_one_to_multi":
      toks, mask = _concat(streams, mods)
      mixed = _split(self.joint(toks, mask), streams, mods)
      self.sow("intermediates", "stage1", mixed)
      out = {m: self.post[m](mixed[m], streams[m][1]) for m in mods}
      return self._multi_stream(out, streams)
    if name in ("cross_attention", "cross_to_concat"):
      out = self._cross(streams)
      if name == "cross_attention":
        return self._multi_stream(out, streams)
      crossed = {m: (out[m], streams[m][1]) for m in mods}
      toks, mask = _concat(crossed, mods)
      return self._single_stream(self.joint(toks, mask), mask, streams)
    if name == "dual_encoder":
      return self._multi_stream({m: streams[m][0] for m in mods}, streams)
    if name == "bottleneck":
      return self._bottleneck(streams)
    raise ValueError(f"unknown model.fusion={name!r}; choose one of {', '.join(FUSIONS)}")

  # -- variants -------------------------------------------------------------------------------

  def _early_sum(self, streams):
    mods, cfg = self.modalities, self.cfg
    lengths = {m: streams[m][0].shape[1] for m in mods}
    n = max(lengths.values())
    if len(set(lengths.values())) > 1:
      if cfg.early_sum_align != "pad":
        raise ValueError(
            f"early_sum needs aligned tokens of equal length, got {lengths}; use time-aligned "
            "inputs or set model.early_sum_align='pad' (pad to the longest, masks OR-ed)")
    weights = (self.sum_weights if cfg.early_sum_weights == "learned"
               else jnp.ones((len(mods),)))
    total, mask = 0.0, None
    for i, m in enumerate(mods):
      t, k = streams[m]
      pad = n - t.shape[1]
      t = jnp.pad(t, ((0, 0), (0, pad), (0, 0)))
      k = jnp.pad(k, ((0, 0), (0, pad)))
      total = total + weights[i].astype(t.dtype) * t * k[..., None].astype(t.dtype)
      mask = k if mask is None else mask | k
    out = self.joint(total, mask)
    res = self._single_stream(out, mask, None)
    res["tokens"] = {m: out for m in mods}
    res["masks"] = {m: mask for m in mods}
    return res

  def _cross(self, streams):
    mods = self.modalities
    x = {m: streams[m][0] for m in mods}
    for layer in self.cross:
      new = {}
      for m in mods:
        others = [o for o in mods if o != m]
        y = jnp.concatenate([x[o] for o in others], axis=1)
        y_mask = jnp.concatenate([streams[o][1] for o in others], axis=1)
        new[m] = layer[m](x[m], streams[m][1], y, y_mask, self.shared_cross)
      x = new  # every stream read the others' input states
    return {m: self.cross_norm[m](x[m]) for m in mods}

  def _bottleneck(self, streams):
    mods, cfg = self.modalities, self.cfg
    b = streams[mods[0]][0].shape[0]
    nb = cfg.num_bottlenecks
    btl = jnp.broadcast_to(self.bottleneck_init.astype(self.block.dtype),
                           (b, nb, self.block.width))
    x = {m: streams[m][0] for m in mods}
    ones = jnp.ones((b, nb), bool)
    for layer in self.fusion_layers:
      updates = []
      for m in mods:
        y = layer[m](jnp.concatenate([x[m], btl], axis=1),
                     jnp.concatenate([streams[m][1], ones], axis=1))
        x[m] = y[:, :-nb]
        updates.append(y[:, -nb:])
      btl = sum(updates) / len(updates)
    out = {m: self.fusion_norm[m](x[m]) for m in mods}
    return self._multi_stream(out, streams)

  # -- outputs --------------------------------------------------------------------------------

  def _single_stream(self, out, mask, streams):
    pooled = pool_tokens(out, mask, self.cfg.pool)
    tokens = _split(out, streams, self.modalities) if streams is not None else {}
    masks = {m: streams[m][1] for m in self.modalities} if streams is not None else {}
    return {"tokens": tokens, "masks": masks, "pooled": {"joint": pooled}, "joint": pooled}

  def _multi_stream(self, out, streams):
    pooled = {m: pool_tokens(out[m], streams[m][1], self.cfg.pool) for m in self.modalities}
    return {"tokens": dict(out), "masks": {m: streams[m][1] for m in self.modalities},
            "pooled": pooled, "joint": combine_pooled(pooled, self.cfg.pool_combine)}


def pool_unimodal(encoded: Mapping[str, Tokens], how: str) -> Dict[str, Any]:
  """Pooled per-modality representations straight after the towers (for contrastive)."""
  return {m: pool_tokens(t, k, how) for m, (t, k) in encoded.items()}
