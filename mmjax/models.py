"""Tokenizers + fusion + heads, built from a config (survey: embedding -> interaction -> heads).

`MultimodalModel` is setup-style so the training objectives can run its stages separately:

  embed(batch)        {modality: (tokens, mask)}           tokenizers.py
  encode(embedded)    per-modality towers                  fusion.Fusion.encode
  interact(encoded)   cross-modal interaction + pooling     fusion.Fusion.interact
  __call__(batch)     all three

and its heads: `contrastive_embedding` (unimodal pooled -> normalized-space projection),
`mlm_logits`, `mim_prediction`, `itm_logits`. The batch maps each modality name to its
input (text: int ids; image/video/audio: float arrays; regions/features: dicts), with an
optional `<modality>_valid` [B] bool for absent modalities.

A modality config may set its own `width` / `heads` / `mlp_dim` (CLIP's 512-wide text tower
beside a 768-wide ViT): its embedder and tower run at that width, and a linear
`tower_proj_<m>` maps the tower's output to model.width for the interaction (none for
dual_encoder, whose towers meet only in the contrastive projections).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import fusion as fusion_lib
from mmjax.layers import BlockConfig
from mmjax.tokenizers import build_embedder

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
PATCH_KINDS = ("image", "video", "audio")
# Modality-config keys that describe the data, not the embedder.
DATA_KEYS = ("kind", "input_shape", "channels", "feature_dim", "in_dim")
# Modality-config keys that size the modality's embedder and tower.
TOWER_KEYS = ("width", "heads", "mlp_dim")


def _dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
  return DTYPES[name]


def block_config(model_cfg, attention_cfg=None) -> BlockConfig:
  att = attention_cfg or ml_collections.ConfigDict({"impl": "auto", "chunk_size": 512})
  if model_cfg.width % model_cfg.heads:
    raise ValueError(f"model.width={model_cfg.width} is not divisible by model.heads="
                     f"{model_cfg.heads}; pick a width that is a multiple of heads")
  return BlockConfig(
      width=model_cfg.width, num_heads=model_cfg.heads, mlp_dim=model_cfg.mlp_dim,
      attention_impl=att.impl, chunk_size=att.get("chunk_size", 512),
      capture_weights=att.get("capture_weights", False),
      dtype=_dtype(model_cfg.get("dtype", "float32")),
      param_dtype=_dtype(model_cfg.get("param_dtype", "float32")),
      remat=model_cfg.get("remat", "none"), scan=model_cfg.get("scan", False),
      dropout=float(model_cfg.get("dropout", 0.0)))


def tower_blocks(model_cfg, base: BlockConfig) -> Tuple[Tuple[str, BlockConfig], ...]:
  """(modality, BlockConfig) for every modality that sets width / heads / mlp_dim; mlp_dim
  defaults to the model's MLP ratio times the modality's width."""
  out = []
  for m, o in model_cfg.modalities.items():
    if not any(k in o for k in TOWER_KEYS):
      continue
    width = int(o.get("width", base.width))
    heads = int(o.get("heads", base.num_heads))
    if width % heads:
      raise ValueError(f"model.modalities.{m}.width={width} is not divisible by its heads="
                       f"{heads}; pick a width that is a multiple of heads")
    mlp = int(o.get("mlp_dim", base.mlp_dim * width // base.width))
    out.append((m, dataclasses.replace(base, width=width, num_heads=heads, mlp_dim=mlp)))
  widths = {base.width} | {b.width for _, b in out}
  if (model_cfg.fusion == "dual_encoder" and len(widths) > 1
      and model_cfg.get("pool_combine", "concat") != "concat"):
    raise ValueError(f"towers of different widths {sorted(widths)} cannot be combined by "
                     f"pool_combine={model_cfg.pool_combine!r}; use pool_combine='concat'")
  return tuple(out)


def fusion_config(model_cfg) -> fusion_lib.FusionConfig:
  d = model_cfg.depth
  mods = tuple(model_cfg.modalities.keys())
  uni = d.unimodal
  per = {m: (uni[m] if isinstance(uni, Mapping) or hasattr(uni, "keys") else int(uni))
         for m in mods}
  return fusion_lib.FusionConfig(
      name=model_cfg.fusion, unimodal_depth=tuple(sorted(per.items())),
      joint_depth=d.get("joint", 0), post_depth=d.get("post", 0), cross_depth=d.get("cross", 0),
      cross_mode=model_cfg.get("cross_mode", "pure"),
      share_cross=model_cfg.get("share_cross", False),
      early_sum_weights=model_cfg.get("early_sum_weights", "fixed"),
      early_sum_align=model_cfg.get("early_sum_align", "none"),
      num_bottlenecks=model_cfg.get("num_bottlenecks", 4), pool=model_cfg.get("pool", "cls"),
      pool_combine=model_cfg.get("pool_combine", "concat"))


class MultimodalModel(nn.Module):
  """Embedders per modality -> Fusion -> heads. Built with `build_model(config)`."""
  modality_cfgs: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...]
  fusion_cfg: fusion_lib.FusionConfig
  block: BlockConfig
  embed_dim: int = 128
  tower_blocks: Tuple[Tuple[str, BlockConfig], ...] = ()  # modalities with their own width

  @property
  def modalities(self) -> Tuple[str, ...]:
    return tuple(m for m, _ in self.modality_cfgs)

  def setup(self):
    blk = self.block
    embedders = {}
    for m, opts in self.modality_cfgs:
      opts = dict(opts)
      kind = opts["kind"]
      kwargs = {k: v for k, v in opts.items() if k not in DATA_KEYS + TOWER_KEYS}
      kwargs.setdefault("dropout", blk.dropout)
      width = dict(self.tower_blocks).get(m, blk).width
      embedders[m] = build_embedder(kind, m, width, blk.dtype, blk.param_dtype, **kwargs)
    self.embedders = embedders
    self.fusion = fusion_lib.Fusion(self.fusion_cfg, blk, self.modalities, self.tower_blocks,
                                    name="fusion")
    dense = lambda n, name, axes=("embed", None): nn.Dense(
        n, dtype=blk.dtype, param_dtype=blk.param_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes))
    self.projections = {m: dense(self.embed_dim, f"proj_{m}") for m in self.modalities}
    self.itm_head = dense(2, "itm_head")
    self.mlm_heads = {m: dense(dict(o).get("vocab_size", 261), f"mlm_head_{m}",
                               ("embed", "vocab"))
                      for m, o in self.modality_cfgs if dict(o)["kind"] == "text"}
    self.mlm_norms = {m: nn.LayerNorm(dtype=blk.dtype, param_dtype=blk.param_dtype,
                                      name=f"mlm_ln_{m}") for m in self.mlm_heads}
    self.mim_heads = {m: dense(self.patch_dim(m), f"mim_head_{m}")
                      for m, o in self.modality_cfgs if dict(o)["kind"] != "text"}
    # CLIP temperature (log scale), SigLIP temperature and bias.
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
    self.sigmoid_t = self.param("sigmoid_t", nn.initializers.constant(np.log(10.0)), ())
    self.sigmoid_b = self.param("sigmoid_b", nn.initializers.constant(-10.0), ())

  def patch_dim(self, modality: str) -> int:
    """Size of one MIM regression target (pixels per patch, or feature size)."""
    o = dict(dict(self.modality_cfgs)[modality])
    kind = o["kind"]
    ch = o.get("channels", 3)
    if kind == "image":
      return o.get("patch", 16) ** 2 * ch
    if kind == "video":
      t, p1, p2 = o.get("tubelet", (2, 16, 16))
      return t * p1 * p2 * ch
    if kind == "audio":
      pt, pf = o.get("patch", (16, 16))
      return pt * pf
    return o.get("feature_dim", 2048) if kind == "regions" else o.get("in_dim", 16)

  # -- stages ---------------------------------------------------------------------------------

  def embed(self, batch: Mapping[str, Any], mim_masks: Optional[Mapping[str, Any]] = None):
    """Embeds every modality present in `batch` (a subset is fine: zero-shot prompts)."""
    mim_masks = mim_masks or {}
    present = [m for m in self.modalities if m in batch]
    if not present:
      raise ValueError(f"batch has none of the model's modalities {list(self.modalities)}; "
                       f"it has {sorted(batch)}")
    return {m: self.embedders[m](batch[m], valid=batch.get(f"{m}_valid"),
                                 mim_mask=mim_masks.get(m)) for m in present}

  def encode(self, embedded):
    return self.fusion.encode(embedded)

  def interact(self, encoded):
    return self.fusion.interact(encoded)

  def __call__(self, batch, mim_masks=None):
    return self.interact(self.encode(self.embed(batch, mim_masks)))

  # -- heads ----------------------------------------------------------------------------------

  def contrastive_embedding(self, encoded) -> Dict[str, Any]:
    """Unimodal pooled -> projection, per modality: {m: [B, embed_dim]} (not normalized)."""
    pooled = fusion_lib.pool_unimodal(encoded, self.fusion_cfg.pool)
    return {m: self.projections[m](pooled[m]) for m in self.modalities if m in pooled}

  def itm_logits(self, joint):
    """[B, D'] -> [B, 2] (not matched, matched)."""
    return self.itm_head(joint)

  def mlm_logits(self, modality: str, tokens):
    return self.mlm_heads[modality](self.mlm_norms[modality](tokens)).astype(jnp.float32)

  def mim_prediction(self, modality: str, tokens):
    return self.mim_heads[modality](tokens).astype(jnp.float32)

  def init_all(self, batch):
    """Touches every stage and head, so `init` creates every parameter."""
    embedded = self.embed(batch)
    encoded = self.encode(embedded)
    out = self.interact(encoded)
    self.contrastive_embedding(encoded)
    self.itm_logits(out["joint"])
    for m in self.mlm_heads:
      self.mlm_logits(m, out["tokens"][m])
    for m in self.mim_heads:
      self.mim_prediction(m, out["tokens"][m])
    return out


def _freeze(cfg) -> Tuple[Tuple[str, Any], ...]:
  items = []
  for k, v in cfg.items():
    if isinstance(v, list):
      v = tuple(v)
    items.append((k, v))
  return tuple(items)


def build_model(config) -> MultimodalModel:
  """MultimodalModel from a full config (uses config.model and config.attention)."""
  mc = config.model
  mods = tuple(mc.modalities.keys())
  fcfg = fusion_config(mc)
  fusion_lib.validate(fcfg, mods)
  blk = block_config(mc, config.get("attention"))
  return MultimodalModel(
      modality_cfgs=tuple((m, _freeze(mc.modalities[m])) for m in mods), fusion_cfg=fcfg,
      block=blk, embed_dim=mc.get("embed_dim", 128), tower_blocks=tower_blocks(mc, blk))


def dummy_batch(config, batch_size: int = 2) -> Dict[str, np.ndarray]:
  """A zero batch with the shapes the config's modalities expect (for init and summaries)."""
  out = {}
  for m, o in config.model.modalities.items():
    kind, shape = o.kind, tuple(o.get("input_shape", ()))
    if kind == "text":
      ids = np.zeros((batch_size, o.get("max_len", 64)), np.int32)
      ids[:, 0] = 1
      out[m] = ids
    elif kind in PATCH_KINDS:
      out[m] = np.zeros((batch_size,) + shape, np.float32)
    elif kind == "regions":
      n = shape[0] if shape else 36
      out[m] = {"features": np.zeros((batch_size, n, o.get("feature_dim", 2048)), np.float32),
                "boxes": np.zeros((batch_size, n, 5), np.float32),
                "mask": np.ones((batch_size, n), bool)}
    else:
      n = shape[0] if shape else o.get("max_len", 64)
      out[m] = np.zeros((batch_size, n, o.get("in_dim", 16)), np.float32)
  return out
