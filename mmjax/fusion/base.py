"""What every fusion design shares: its config, the design base class, the registry, pooling,
and the one `Fusion` module that runs a design.

A design (a `FusionDesign` subclass, registered by name with `@register`) declares what it is
and builds what it needs:
  towers_are_design  the unimodal towers are the design's own Tf1/Tf2 (required, depth > 0)
  joint_output       it fuses the modalities into a joint representation (a matching head
                     can classify it)
  multi_stream       its output keeps one stream per modality (pooled per modality and
                     combined by pool_combine), else one joint stream pooled once
  projects_towers    towers of their own width are mapped to model width before `interact`
  independent_streams  `interact` hands each modality's tower output through untouched (no
                     token sees another modality): text packing (objectives.pack_text) is exact
  prefix_lm          `interact` takes positions {m: [B, N_m] int} and masks the joint stream
                     with them (key j visible to query i iff pos_j <= pos_i): prefix-LM
  cost, exponents    the survey's attention cost per layer, and the asymptotic log-log
                     exponents it implies (all tokens doubling; N_B alone)
  attention_cost(n)  that cost as a formula of the token counts, weighted by stage depths
  stage_flops(n,..)  analytic matmul FLOPs of the interaction stages (2 per multiply-add)
  build(module)      creates the design's submodules and parameters inside Fusion.setup
  interact(module, parts, streams)  the interaction, returning the output dict below
Objectives, config checks, evaluators and benchmarks ask the design; no other file keeps a
list of design names. Adding a design is one file (plus a config).

Input of `interact`: modality -> (tokens [B, N_m, D], mask [B, N_m]). Output: a dict with
  tokens {modality: [B, N_m, D]}, masks {modality: [B, N_m]}, pooled {stream: [B, D]}
  ('joint' for single-stream designs, else per modality), joint [B, D'].
Padding never changes a valid token's output; an absent modality (all masked) gives defined
outputs (attention with no valid key outputs zeros; pooled means over no token are 0).
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mmjax.config_lib import BlockConfig, FusionConfig
from mmjax.layers import Encoder, masked_mean
from mmjax.registry import Registry

Tokens = Tuple[Any, Any]  # (tokens [B, N, D], mask [B, N])

POOLS = ("cls", "mean")
POOL_COMBINES = ("concat", "product", "sum")


# ------------------------------------------------------------------------------ FLOP counts

def block_flops(n: float, d: float, m: float) -> float:
  """Self-attention block on n tokens: 8nd^2 (q, k, v, out) + 4n^2d (QK^T, PV) + 4ndm (MLP)."""
  return 8 * n * d * d + 4 * n * n * d + 4 * n * d * m


def cross_block_flops(nq: float, nk: float, d: float, m: float, mode: str) -> float:
  """Cross block, queries from nq tokens, keys/values from nk: 4nq d^2 + 4nk d^2 + 4nq nk d +
  4nq d m, plus the self-attention sublayer 8nq d^2 + 4nq^2 d when mode is self_cross."""
  f = 4 * nq * d * d + 4 * nk * d * d + 4 * nq * nk * d + 4 * nq * d * m
  return f + (8 * nq * d * d + 4 * nq * nq * d if mode == "self_cross" else 0)


# ------------------------------------------------------------------------------ pooling

def pool_tokens(tokens, mask, how: str):
  """[B, N, D], [B, N] -> [B, D]: the first valid token ([CLS] of the first modality present),
  the last valid token ('last': CLIP's end-of-text token, SigLIP's final position), or the
  mean over valid tokens. A row with no valid token pools to 0."""
  if how == "last":
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    picked = jnp.take_along_axis(tokens, last[:, None, None], axis=1)[:, 0]
    return picked * jnp.any(mask, axis=1, keepdims=True).astype(tokens.dtype)
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


def pool_unimodal(encoded: Mapping[str, Tokens], how: str) -> Dict[str, Any]:
  """Pooled per-modality representations straight after the towers (for alignment)."""
  return {m: pool_tokens(t, k, how) for m, (t, k) in encoded.items()}


def concat(streams: Mapping[str, Tokens], order):
  toks = jnp.concatenate([streams[m][0] for m in order], axis=1)
  mask = jnp.concatenate([streams[m][1] for m in order], axis=1)
  return toks, mask


def split(tokens, streams: Mapping[str, Tokens], order) -> Dict[str, Any]:
  out, start = {}, 0
  for m in order:
    n = streams[m][0].shape[1]
    out[m] = tokens[:, start:start + n]
    start += n
  return out


# ------------------------------------------------------------------------------ designs

class FusionDesign:
  """Base of every design; subclasses set the class attributes and override what differs."""
  name: ClassVar[str] = ""
  survey_name: ClassVar[str] = ""
  formula: ClassVar[str] = ""
  cost: ClassVar[str] = ""
  exponents: ClassVar[Tuple[float, float]] = (2, 2)
  towers_are_design: ClassVar[bool] = False
  joint_output: ClassVar[bool] = True
  multi_stream: ClassVar[bool] = False
  projects_towers: ClassVar[bool] = True
  independent_streams: ClassVar[bool] = False
  prefix_lm: ClassVar[bool] = False
  position_aligned: ClassVar[bool] = False  # adds the modalities' tokens position by position

  def __init__(self, cfg: FusionConfig):
    self.cfg = cfg

  # -- what it has ----------------------------------------------------------------------------

  def has_towers(self, modalities: Sequence[str]) -> bool:
    """Per-modality embeddings exist before any interaction (alignment losses need them)."""
    return self.towers_are_design or all(self.cfg.depth_of(m) > 0 for m in modalities)

  def validate(self, modalities: Sequence[str]) -> None:
    """One-line errors for impossible settings (before anything compiles)."""
    cfg = self.cfg
    if len(modalities) < 2:
      raise ValueError(f"fusion {cfg.name} needs two or more modalities, got {list(modalities)}")
    if cfg.pool not in POOLS:
      raise ValueError(f"unknown pool {cfg.pool!r}; use 'cls' or 'mean'")
    if cfg.pool_combine not in POOL_COMBINES:
      raise ValueError(f"unknown pool_combine {cfg.pool_combine!r}; use concat, product or sum")
    if self.towers_are_design:
      shallow = [m for m in modalities if cfg.depth_of(m) <= 0]
      if shallow:
        raise ValueError(f"{cfg.name} needs a unimodal tower for every modality; set "
                         f"depth.unimodal > 0 for {shallow}")

  def validate_lengths(self, lengths: Mapping[str, int]) -> None:
    """Checks on the token count of each modality (only early_sum has any)."""

  # -- cost -----------------------------------------------------------------------------------

  def attention_cost(self, n: Mapping[str, float]) -> float:
    """The survey's attention cost of the design for token counts n (modality -> tokens, in
    the model's order), weighted by the stage depths."""
    raise NotImplementedError

  def stage_flops(self, n: Mapping[str, float], d: int, m: int) -> float:
    """Matmul FLOPs per example of the interaction stages (after the towers) at width d and
    MLP width m."""
    raise NotImplementedError

  # -- modules --------------------------------------------------------------------------------

  def build(self, module: "Fusion") -> Dict[str, Any]:
    """Submodules and parameters, created inside Fusion.setup (names are parameter paths)."""
    return {}

  def interact(self, module: "Fusion", parts: Mapping[str, Any],
               streams: Mapping[str, Tokens]) -> Dict[str, Any]:
    raise NotImplementedError

  # -- outputs shared by the designs ----------------------------------------------------------

  def single_stream_output(self, out, mask, streams: Optional[Mapping[str, Tokens]], modalities):
    """One joint stream: pooled once; tokens split back per modality."""
    pooled = pool_tokens(out, mask, self.cfg.pool)
    tokens = split(out, streams, modalities) if streams is not None else {}
    masks = {m: streams[m][1] for m in modalities} if streams is not None else {}
    return {"tokens": tokens, "masks": masks, "pooled": {"joint": pooled}, "joint": pooled}

  def multi_stream_output(self, out: Mapping[str, Any], streams: Mapping[str, Tokens], modalities):
    """One stream per modality: each pooled, then combined by pool_combine."""
    pooled = {m: pool_tokens(out[m], streams[m][1], self.cfg.pool) for m in modalities}
    return {"tokens": dict(out), "masks": {m: streams[m][1] for m in modalities},
            "pooled": pooled, "joint": combine_pooled(pooled, self.cfg.pool_combine)}


_DESIGNS = Registry("fusion design", "model.fusion", FusionDesign)
register = _DESIGNS.register  # class decorator: model.fusion=<cls.name>
names = _DESIGNS.names        # every registered design, in registration order
get = _DESIGNS.get            # the design class registered as a name


def design_of(cfg) -> "FusionDesign":
  """The design object of a FusionConfig (or of a ModelConfig's fusion)."""
  cfg = getattr(cfg, "fusion", cfg)
  return get(cfg.name)(cfg)


def joint_encoder(module: "Fusion") -> Encoder:
  """The joint single stream Tf (Tf3) at model width, `model.depth.joint` layers."""
  return Encoder(module.block, module.cfg.joint_depth, name="joint")


class Fusion(nn.Module):
  """Runs one registered design. `modalities` fixes the order of concatenation.

  __call__(inputs) = interact(encode(inputs)); see the module docstring for the output.
  """
  cfg: FusionConfig
  block: BlockConfig
  modalities: Tuple[str, ...]
  tower_blocks: Tuple[Tuple[str, BlockConfig], ...] = ()  # towers with their own width

  @property
  def design(self) -> FusionDesign:
    return design_of(self.cfg)

  def setup(self):
    blk, mods, design = self.block, self.modalities, self.design
    own = dict(self.tower_blocks)
    self.towers = {m: Encoder(own.get(m, blk), self.cfg.depth_of(m), name=f"tower_{m}")
                   for m in mods}
    # A tower narrower or wider than the interaction: Z_m W_m into model width (METER-style).
    self.tower_proj = {m: nn.Dense(
        blk.width, dtype=blk.dtype, param_dtype=blk.param_dtype, name=f"tower_proj_{m}",
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                 (None, "embed")))
                       for m in mods if design.projects_towers
                       and own.get(m, blk).width != blk.width}
    self.parts = design.build(self)

  def __call__(self, inputs: Mapping[str, Tokens]):
    return self.interact(self.encode(inputs))

  def encode(self, inputs: Mapping[str, Tokens],
             segment_ids: Optional[Mapping[str, Any]] = None,
             positions: Optional[Mapping[str, Any]] = None) -> Dict[str, Tokens]:
    """Per-modality towers (identity where depth is 0) for the modalities present, then
    tower_proj_<m> where the tower has its own width. No modality sees another.
    segment_ids {m: [B, N] int} (packed rows): a token attends only within its segment.
    positions {m: [B, N] int} (prefix-LM): token i sees token j only if pos_j <= pos_i."""
    out, segment_ids, positions = {}, segment_ids or {}, positions or {}
    for m in self.modalities:
      if m in inputs:
        tokens = self.towers[m](*inputs[m], segment_ids.get(m), positions.get(m))
        out[m] = (self.tower_proj[m](tokens) if m in self.tower_proj else tokens, inputs[m][1])
    return out

  def interact(self, streams: Mapping[str, Tokens],
               positions: Optional[Mapping[str, Any]] = None):
    missing = [m for m in self.modalities if m not in streams]
    if missing:
      raise ValueError(f"fusion inputs lack modalities {missing}; got {sorted(streams)} (mark "
                       "an absent modality with <modality>_valid=False instead of dropping it)")
    if positions is None:
      return self.design.interact(self, self.parts, streams)
    if not self.design.prefix_lm:
      raise ValueError(f"fusion {self.cfg.name} has no prefix-LM mask; use early_concat or "
                       "hier_multi_to_one for loss_weights.prefix_lm")
    return self.design.interact(self, self.parts, streams, positions)
