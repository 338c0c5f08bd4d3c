"""Tokenizers + fusion + heads (survey: embedding -> interaction -> heads), and what every
pretraining objective needs from one forward of them.

`MultimodalModel(cfg: ModelConfig)` is setup-style so its stages can run separately:

  embed(batch)        {modality: (tokens, mask)}           tokenizers.py
  encode(embedded)    per-modality towers                  fusion.Fusion.encode
  interact(encoded)   cross-modal interaction + pooling     the registered FusionDesign
  __call__(batch)     all three
  pretraining_outputs(batch, rng, objectives)   everything the objectives consume (below)

Heads: `contrastive_embedding` (unimodal pooled -> projection), `mlm_logits`,
`mim_prediction`, `itm_logits`; with their objectives (model.objective_heads) the captioning
decoder `caption_logits` (mmjax.decoder, reading `caption_memory`), `lm_logits` (prefix-LM),
`frame_order_logits`, the sentence-order and masked-region heads. The batch maps each modality name to its input (text: int
ids; image/video/audio: float arrays; regions/features: dicts), with an optional
`<modality>_valid` [B] bool for absent modalities.

A modality may set its own `width` / `heads` / `mlp_dim` (CLIP's 512-wide text tower beside a
768-wide ViT): its embedder and tower run at that width, and a linear `tower_proj_<m>` maps
the tower's output to model.width for the interaction (none where the design meets only in
the contrastive projections, as dual_encoder does).

Per modality, the contrastive embedding is pool_m(tower output) -> proj_<m>: pool is the
model's `pool` or the modality's own (cls | mean | last valid token | map, an attention-pool
head `map_<m>`), and proj is a Dense (with or without bias) or, with proj=False, the identity.
`model.objective_heads` selects which objective heads exist (an imported CLIP has only the
contrastive temperature), so a converted checkpoint holds exactly the published parameters.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax import decoder as decoder_lib
from mmjax import fusion as fusion_lib
from mmjax import objectives as objectives_lib
from mmjax import ordering, packing
from mmjax.layers import MAPHead, l2_normalize
from mmjax.config_lib import ModelConfig, ObjectivesConfig
from mmjax.configure import resolve_model
from mmjax.tokenizers import (dummy_input, input_keys, modality_embedder, patchify_image,
                              patchify_spectrogram, patchify_video)

class MultimodalModel(nn.Module):
  """Embedders per modality -> Fusion -> heads. Built with `build_model(config)`."""
  cfg: ModelConfig

  @property
  def modalities(self):
    return self.cfg.names

  @property
  def fusion_cfg(self) -> fusion_lib.FusionConfig:
    return self.cfg.fusion

  @property
  def block(self):
    return self.cfg.block

  def setup(self):
    cfg, blk = self.cfg, self.cfg.block
    heads = cfg.objective_heads
    dense = lambda n, name, bias=True: objectives_lib.dense(self, n, name, bias=bias)
    self.embedders = {mod.name: modality_embedder(mod, blk) for mod in cfg.modalities}
    self.fusion = fusion_lib.Fusion(cfg.fusion, blk, self.modalities, cfg.tower_blocks,
                                    name="fusion")
    self.projections = {m.name: dense(cfg.embed_dim, f"proj_{m.name}", bias=m.proj_bias)
                        for m in cfg.modalities if m.proj}
    self.pool_heads = {m.name: MAPHead(m.tower or blk, name=f"map_{m.name}")
                       for m in cfg.modalities if m.pool == "map"}
    # Each objective's heads ({objective: {key: module or parameter}}; mmjax.objectives),
    # only those of model.objective_heads, so a checkpoint holds exactly what trains.
    self.heads = {o.name: o.heads(self) for o in objectives_lib.registered(heads)}

  # -- stages ---------------------------------------------------------------------------------

  def embed(self, batch: Mapping[str, Any], mim_masks: Optional[Mapping[str, Any]] = None):
    """Embeds every modality present in `batch` (a subset is fine: zero-shot prompts)."""
    mim_masks = mim_masks or {}
    present = [m for m in self.modalities if m in batch]
    if not present:
      raise ValueError(f"batch has none of the model's modalities {list(self.modalities)}; "
                       f"it has {sorted(batch)}")
    grids = {m: {"patch_grid": batch[f"{m}_patch_grid"]} for m in present
             if f"{m}_patch_grid" in batch}  # native-aspect images (data.max_patches)
    return {m: self.embedders[m](batch[m], valid=batch.get(f"{m}_valid"),
                                 mim_mask=mim_masks.get(m), **grids.get(m, {}))
            for m in present}

  def encode(self, embedded, packs: Optional[Mapping[str, Any]] = None):
    """Per-modality towers. packs {m: index [R, L]} (native-aspect image packing,
    objectives.pack_images): modality m's tower runs on R packed rows of L token slots
    (index: flat into its [B, L] tokens, -1 = empty; attention within each example's
    segment), and its output is put back in the [B, L] layout, so everything after the towers
    is unchanged."""
    packs = {m: i for m, i in (packs or {}).items() if m in embedded}
    out = self.fusion.encode({m: e for m, e in embedded.items() if m not in packs})
    for m, index in packs.items():
      tokens, mask = embedded[m]
      seg, _ = packing.index_segments(index, tokens.shape[1])
      rows = self.encode_packed(m, packing.gather_packed(tokens, index),
                                packing.gather_packed(mask, index, False), seg)
      out[m] = (packing.scatter_unpacked(rows, index, *tokens.shape[:2]), mask)
    return {m: out[m] for m in embedded if m in out}

  def interact(self, encoded):
    return self.fusion.interact(encoded)

  def __call__(self, batch, mim_masks=None):
    return self.interact(self.encode(self.embed(batch, mim_masks)))

  # -- heads ----------------------------------------------------------------------------------

  def pooled_towers(self, encoded) -> Dict[str, Any]:
    """Per-modality pooled tower outputs {m: [B, D_m]} (the modality's pool, else model.pool)."""
    out = {}
    for m, (tokens, mask) in encoded.items():
      how = self.cfg.modality(m).pool or self.cfg.fusion.pool
      out[m] = (self.pool_heads[m](tokens, mask) if how == "map"
                else fusion_lib.pool_tokens(tokens, mask, how))
    return out

  def contrastive_embedding(self, encoded) -> Dict[str, Any]:
    """Unimodal pooled -> projection, per modality: {m: [B, embed_dim]} (not normalized)."""
    pooled = self.pooled_towers(encoded)
    return {m: self.projections[m](pooled[m]) if m in self.projections else pooled[m]
            for m in self.modalities if m in pooled}

  def alignment_logits(self, za, zb, kind: str = "contrastive"):
    """[Na, E], [Nb, E] -> [Na, Nb] the logits of the alignment loss: contrastive
    exp(logit_scale) cos(a, b) (CLIP, scale capped at 100), sigmoid exp(t) cos(a, b) + b
    (SigLIP)."""
    za, zb = l2_normalize(za), l2_normalize(zb)
    if kind == "sigmoid":
      t, b = self.heads["sigmoid"]["t"], self.heads["sigmoid"]["b"]
      return jnp.exp(t) * (za @ zb.T) + b
    return jnp.minimum(jnp.exp(self.logit_scale), 100.0) * (za @ zb.T)

  @property
  def logit_scale(self):
    """The contrastive temperature parameter (log scale), None without the contrastive head."""
    return self.heads.get("contrastive", {}).get("logit_scale")

  def itm_logits(self, joint):
    """[B, D'] -> [B, 2] (not matched, matched)."""
    if "itm" not in self.heads:
      raise ValueError("this model has no ITM head (model.objective_heads lacks 'itm')")
    return self.heads["itm"]["head"](joint)

  def mlm_logits(self, modality: str, tokens):
    mlm = self.heads["mlm"]
    return mlm["head"][modality](mlm["norm"][modality](tokens)).astype(jnp.float32)

  def mim_prediction(self, modality: str, tokens):
    return self.heads["mim"]["head"][modality](tokens).astype(jnp.float32)

  def init_all(self, batch):
    """Touches every stage and head, so `init` creates every parameter."""
    embedded = self.embed(batch)
    encoded = self.encode(embedded)
    out = self.interact(encoded)
    self.contrastive_embedding(encoded)
    for o in objectives_lib.registered(self.heads):
      o.init(self, batch, encoded, out)
    return out

  # -- generative and ordering heads ----------------------------------------------------------

  def frame_groups(self, modality: str) -> int:
    """Tubelet groups G = T / t of a video modality's configured input (frame ordering)."""
    m = self.cfg.modality(modality)
    return m.input_shape[0] // tuple(m.option("tubelet"))[0] if m.input_shape else 1

  def caption_logits(self, ids, memory, memory_mask, cache=None, positions=None):
    """The captioning decoder on caption ids [B, n] (at `positions` [B, n], default 0..n-1)
    reading memory [B, Nm, Dm] -> (logits [B, n, V] float32, cache' or None)."""
    emb = self.embedders[self.cfg.caption_text]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    tokens, _ = emb(ids, positions=positions)
    return self.heads["caption"]["decoder"](tokens, memory, memory_mask, cache)

  def caption_memory(self, batch):
    """(tokens [B, Nm, D], mask [B, Nm]) the decoder reads: the caption source's tower output."""
    src = self.cfg.caption_source
    keep = {k: v for k, v in batch.items() if k in input_keys(src)}
    return self.encode(self.embed(keep))[src]

  def lm_logits(self, modality: str, tokens):
    lm = self.heads["prefix_lm"]
    return lm["head"][modality](lm["norm"][modality](tokens)).astype(jnp.float32)

  def frame_order_logits(self, modality: str, tokens):
    """Video stream tokens [B, (1 +) G*S, D] -> [B, G, G]: each tubelet group's tokens
    mean-pooled, then classified into its original group index."""
    start = 1 if self.embedders[modality].add_cls else 0
    g = self.frame_groups(modality)
    x = tokens[:, start:]
    x = x.reshape(x.shape[0], g, x.shape[1] // g, x.shape[2]).mean(axis=2)
    return self.heads["frame_order"]["head"][modality](x).astype(jnp.float32)

  # -- pretraining ----------------------------------------------------------------------------

  def mim_target(self, modality: str, x):
    """The regression target of masked modelling: the input cut into the embedder's patches
    [B, N, patch_dim], in token order."""
    emb = self.embedders[modality]
    kind = self.cfg.modality(modality).kind
    if kind == "image":
      return patchify_image(x, emb.patch)
    if kind == "video":
      return patchify_video(x, tuple(emb.tubelet))
    if kind == "audio":
      return patchify_spectrogram(x, tuple(emb.patch))
    raise ValueError(f"MIM is defined for image, video and audio inputs, not {kind!r}")

  def pretraining_outputs(self, batch, rng, objectives: ObjectivesConfig,
                          cached: bool = False) -> Dict[str, Any]:
    """{objective: what its loss reads} for every objective weighted > 0, from one shared pass
    over `batch` (clean and masked encodings computed once; mmjax.objectives.SharedPass).
    rng draws every mask, shuffle and negative. cached: exact accumulation's outputs."""
    return objectives_lib.pretraining_outputs(self, batch, rng, objectives, cached)

  def teacher_outputs(self, batch, objectives: ObjectivesConfig) -> Dict[str, Any]:
    """{teacher key: what the EMA teacher computes} for the objectives that distil from one
    (objectives.teacher_outputs; applied with the teacher's parameters)."""
    return objectives_lib.teacher_outputs(self, batch, objectives)

  def real_tokens(self, modality: str, ids):
    """[B, L] bool: the text tokens that are real (key_mask 'none' attends to padding, so its
    padding is told apart by the pad id here)."""
    emb = self.embedders[modality]
    return emb.token_mask(ids) if emb.key_mask != "none" else ids != emb.pad_id

  def shuffle_frames(self, modality: str, video, rng, ratio: float):
    """(video with `ratio` of its tubelet groups shuffled, perm [B, G], shuffled [B, G])."""
    perm, moved = ordering.frame_permutation(rng, video.shape[0], self.frame_groups(modality),
                                             ratio)
    t = tuple(self.embedders[modality].tubelet)[0]
    return ordering.permute_frames(video, perm, t), perm, moved

  def prefix_stream(self, batch, prefix):
    """The text tokens [B, L, D] of the joint stream under the prefix-LM mask, the text's
    first `prefix` [B] tokens being the prefix."""
    t = self.cfg.caption_text
    pos = {t: decoder_lib.prefix_positions(prefix, batch[t].shape[1])}
    fused = self.fusion.interact(self.fusion.encode(self.embed(batch), None, pos), pos)
    return fused["tokens"][t][:, :batch[t].shape[1]]

  def frame_order_predictions(self, batch, rng, ratio: float, modality: str):
    """Evaluation: (logits [B, G, G], perm [B, G], shuffled [B, G]) on a batch whose video
    tubelet groups are shuffled (mmjax.ordering.frame_permutation with `rng`)."""
    video, perm, moved = self.shuffle_frames(modality, batch[modality], rng, ratio)
    shuffled = dict(batch, **{modality: video})
    return self.frame_order_logits(modality, self(shuffled)["tokens"][modality]), perm, moved

  def prefix_lm_logits(self, batch, ids, prefix):
    """Next-token logits [B, L, V] of text ids [B, L] whose first `prefix` [B] tokens are the
    prefix, read by the joint stream over [other modalities; text] (generation)."""
    t = self.cfg.caption_text
    return self.lm_logits(t, self.prefix_stream(dict(batch, **{t: ids}), prefix))

  def packed_mlm(self, modality: str, masked_ids, index, targets, weights, valid=None):
    """MLM on packed rows (mmjax.packing): masked_ids, targets, weights [B, L] (masked before
    packing) and index [R, L] -> (logits [R, L, V], targets [R, L], weights [R, L]). The text
    tower sees per-example positions and attends within each example's segment only."""
    emb, length = self.embedders[modality], masked_ids.shape[1]
    mask = emb.token_mask(masked_ids)
    if valid is not None:
      mask = mask & valid[:, None]
    seg, pos = packing.index_segments(index, length)
    ids = packing.gather_packed(masked_ids, index, emb.pad_id)
    tokens, _ = emb(ids, positions=pos)
    mask = packing.gather_packed(mask, index, False)
    encoded = self.encode_packed(modality, tokens, mask, seg)
    return (self.mlm_logits(modality, encoded), packing.gather_packed(targets, index, 0),
            packing.gather_packed(weights, index, 0.0))

  def encode_packed(self, modality: str, tokens, mask, segment_ids):
    """The modality's tower on packed rows: [R, L, D], mask and segment ids [R, L]."""
    return self.fusion.encode({modality: (tokens, mask)}, {modality: segment_ids})[modality][0]


def build_model(config) -> MultimodalModel:
  """MultimodalModel from a Config, a ModelConfig or a ConfigDict (its model and attention
  sections parsed and checked)."""
  return MultimodalModel(resolve_model(config))


def dummy_batch(config, batch_size: int = 2) -> Dict[str, np.ndarray]:
  """A zero batch with the shapes the modalities expect (for init and summaries)."""
  return {mod.name: dummy_input(mod, batch_size) for mod in resolve_model(config).modalities}
