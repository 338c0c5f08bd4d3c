"""Transformer layers: MLP, pre-LN self-attention block, cross-attention blocks, layer stacks.

Every block is pre-LN: x <- x + Drop(Attn(LN(x))); x <- x + Drop(MLP(LN(x))). Drop is residual
dropout at rate BlockConfig.dropout, active only when the apply is given a 'dropout' rng (the
train step); evaluation passes none and is deterministic. Parameters carry logical axis names
(embed, mlp, heads, kv, layers) for the one rules table in mmjax/sharding.py.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.attention import MultiHeadAttention
from mmjax.config_lib import BlockConfig

# x -> f(x) of the MLP. gelu_tanh: GELU's tanh approximation (flax's nn.gelu default, SigLIP);
# gelu: exact x * Phi(x) (open_clip, ViT); quick_gelu: x * sigmoid(1.702 x) (OpenAI CLIP).
ACTIVATIONS = {
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": nn.relu,
}

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_norm(cfg: BlockConfig, name: str):
  """The block's LayerNorm (cfg.norm_eps, dtypes; scale and bias sharded on 'embed')."""
  return nn.LayerNorm(
      epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def dropout(module: nn.Module, rate: float, x):
  """Inverted dropout, x * Bernoulli(1 - rate) / (1 - rate), drawn from the module's 'dropout'
  rng; the identity when rate is 0 or the apply has no 'dropout' rng (evaluation)."""
  if rate <= 0.0 or not module.has_rng("dropout"):
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def mha(cfg: BlockConfig, name: str):
  """The block's multi-head attention (heads, head_dim, attention implementation, dtypes)."""
  return MultiHeadAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, impl=cfg.attention_impl,
      chunk_size=cfg.chunk_size, capture_weights=cfg.capture_weights, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype, key_bias=cfg.key_bias, name=name)


class Mlp(nn.Module):
  """Position-wise FFN: Dense(E->M), activation (cfg.activation), Dense(M->E).
  [B, N, E] -> [B, N, E]."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    init = nn.initializers.xavier_uniform()
    h = nn.Dense(cfg.mlp_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="fc1",
                 kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
    h = nn.with_logical_constraint(ACTIVATIONS[cfg.activation](h), ("batch", "length", "mlp"))
    return nn.Dense(x.shape[-1], dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="fc2",
                    kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(h)


class EncoderBlock(nn.Module):
  """Pre-LN self-attention block (causal when cfg.causal). x [B, N, E], mask [B, N] ->
  [B, N, E]. positions [B, N] int (optional; prefix-LM): token i sees token j only if
  positions[j] <= positions[i] (mmjax.attention)."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x, mask, segment_ids=None, positions=None):
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = layer_norm(self.cfg, "ln_attn")(x)
    causal = self.cfg.causal
    if positions is not None and causal:  # a causal tower inside a prefix-LM pass stays causal
      positions = positions * x.shape[1] + jnp.arange(x.shape[1], dtype=positions.dtype)
      causal = False
    h = mha(self.cfg, "attn")(h, kv_mask=mask, q_segment_ids=segment_ids,
                               kv_segment_ids=segment_ids, causal=causal,
                               q_positions=positions, kv_positions=positions)
    x = x + dropout(self, self.cfg.dropout, h)
    h = Mlp(self.cfg, name="mlp")(layer_norm(self.cfg, "ln_mlp")(x))
    return x + dropout(self, self.cfg.dropout, h)


class CrossBlock(nn.Module):
  """One stream's cross-attention layer, in place (ViLBERT/LXMERT/METER residual form).

  mode='pure':       x <- x + MHSA(Q=x, K=V=y);                      x <- x + MLP(x)
  mode='self_cross': x <- x + MHSA(x, x); x <- x + MHSA(Q=x, K=V=y); x <- x + MLP(x)
  x [B, Nx, E] with mask [B, Nx]; y [B, Ny, E] with mask [B, Ny]. `cross_attn` may be a shared
  MultiHeadAttention (LXMERT shares it between the two directions).
  """
  cfg: BlockConfig
  mode: str = "pure"

  @nn.compact
  def __call__(self, x, x_mask, y, y_mask, cross_attn: Optional[nn.Module] = None):
    cfg = self.cfg
    drop = lambda h: dropout(self, cfg.dropout, h)
    if self.mode == "self_cross":
      x = x + drop(mha(cfg, "self_attn")(layer_norm(cfg, "ln_self")(x), kv_mask=x_mask))
    elif self.mode != "pure":
      raise ValueError(f"unknown cross mode {self.mode!r}; use 'pure' or 'self_cross'")
    attn = cross_attn if cross_attn is not None else mha(cfg, "cross_attn")
    x = x + drop(attn(layer_norm(cfg, "ln_cross_q")(x), layer_norm(cfg, "ln_cross_kv")(y),
                      kv_mask=y_mask))
    return x + drop(Mlp(cfg, name="mlp")(layer_norm(cfg, "ln_mlp")(x)))


class MAPHead(nn.Module):
  """Multihead attention pooling (SigLIP's head, Set Transformer's PMA): a learned probe
  attends to the tokens, then a residual MLP. x [B, N, E], mask [B, N] -> [B, E]:
    h = MHA(Q=probe, K=V=x);  out = h + MLP(LN(h))."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x, mask):
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(), (None, "embed")), (1, x.shape[-1]), self.cfg.param_dtype)
    q = jnp.broadcast_to(probe.astype(x.dtype)[None], (x.shape[0], 1, x.shape[-1]))
    h = mha(self.cfg, "attn")(q, x, kv_mask=mask)
    h = h + Mlp(self.cfg, name="mlp")(layer_norm(self.cfg, "ln")(h))
    return h[:, 0]


class _ScanBlock(nn.Module):
  """EncoderBlock with the (carry, out) signature nn.scan wants."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x, mask, segment_ids, positions):
    return EncoderBlock(self.cfg, name="block")(x, mask, segment_ids, positions), None


class Encoder(nn.Module):
  """A stack of `depth` EncoderBlocks, optionally nn.scan-ned (stacked params on 'layers')
  and rematerialized with a named policy, closed by a final LayerNorm.

  x [B, N, E], mask [B, N] -> [B, N, E]. depth 0 is the identity (no final norm).
  segment_ids / positions [B, N] (optional) restrict attention (EncoderBlock).
  """
  cfg: BlockConfig
  depth: int
  final_norm: bool = True

  @nn.compact
  def __call__(self, x, mask, segment_ids=None, positions=None):
    if self.depth == 0:
      return x
    cfg = self.cfg
    if cfg.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {cfg.remat!r}; choose one of "
                       f"{', '.join(REMAT_POLICIES)}")
    if cfg.scan:
      block = _ScanBlock
      if cfg.remat != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
      stack = nn.scan(
          block, length=self.depth, variable_axes={"params": 0, "intermediates": 0,
                                                   "attn_flops": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, name="layers")(x, mask, segment_ids, positions)
    else:
      block = EncoderBlock
      if cfg.remat != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat])
      for i in range(self.depth):
        x = block(cfg, name=f"layer_{i}")(x, mask, segment_ids, positions)
    if self.final_norm:
      x = layer_norm(cfg, "ln_final")(x)
    return x


def masked_mean(x, mask):
  """Mean over valid tokens. x [B, N, E], mask [B, N] -> [B, E]; all-invalid rows give 0."""
  m = mask.astype(x.dtype)[..., None]
  return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def l2_normalize(x, eps: float = 1e-6):
  """x / max(||x||, eps) over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
