"""Tokenizers + fusion + heads (survey: embedding -> interaction -> heads), and what every
pretraining objective needs from one forward of them.

`MultimodalModel(cfg: ModelConfig)` is setup-style so its stages can run separately:

  embed(batch)        {modality: (tokens, mask)}           tokenizers.py
  encode(embedded)    per-modality towers                  fusion.Fusion.encode
  interact(encoded)   cross-modal interaction + pooling     the registered FusionDesign
  __call__(batch)     all three
  pretraining_outputs(batch, rng, objectives)   everything the objectives consume (below)

Heads: `contrastive_embedding` (unimodal pooled -> projection), `mlm_logits`,
`mim_prediction`, `itm_logits`; with their objectives (config_lib.EXTRA_HEADS) the captioning
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

import itertools
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import decoder as decoder_lib
from mmjax import fusion as fusion_lib
from mmjax import masking, ordering, packing
from mmjax.layers import MAPHead, l2_normalize
from mmjax.config_lib import PATCH_KINDS, ModelConfig, ObjectivesConfig, parse_model
from mmjax.tokenizers import build_embedder, patchify_image, patchify_spectrogram, patchify_video

ALIGNMENT = ("contrastive", "sigmoid")


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
    embedders = {}
    for mod in cfg.modalities:
      opts = dict(mod.options)
      opts.setdefault("dropout", blk.dropout)
      opts.setdefault("norm_eps", (mod.tower or blk).norm_eps)
      width = (mod.tower or blk).width
      embedders[mod.name] = build_embedder(mod.kind, mod.name, width, blk.dtype,
                                           blk.param_dtype, **opts)
    self.embedders = embedders
    self.fusion = fusion_lib.Fusion(cfg.fusion, blk, self.modalities, cfg.tower_blocks,
                                    name="fusion")
    dense = lambda n, name, axes=("embed", None), bias=True: nn.Dense(
        n, dtype=blk.dtype, param_dtype=blk.param_dtype, name=name, use_bias=bias,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes))
    self.projections = {m.name: dense(cfg.embed_dim, f"proj_{m.name}", bias=m.proj_bias)
                        for m in cfg.modalities if m.proj}
    self.pool_heads = {m.name: MAPHead(m.tower or blk, name=f"map_{m.name}")
                       for m in cfg.modalities if m.pool == "map"}
    self.itm_head = dense(2, "itm_head") if "itm" in heads else None
    self.mlm_heads = {m.name: dense(m.option("vocab_size"), f"mlm_head_{m.name}",
                                    ("embed", "vocab"))
                      for m in cfg.modalities if m.kind == "text" and "mlm" in heads}
    self.mlm_norms = {m: nn.LayerNorm(dtype=blk.dtype, param_dtype=blk.param_dtype,
                                      name=f"mlm_ln_{m}") for m in self.mlm_heads}
    self.mim_heads = {m.name: dense(m.patch_dim, f"mim_head_{m.name}")
                      for m in cfg.modalities if m.kind != "text" and m.kind != "regions"
                      and "mim" in heads}
    # Generative, ordering and region heads (built only with their objective, config_lib).
    self.caption_decoder = None
    if "caption" in heads:
      t = cfg.modality(cfg.caption_text)
      self.caption_decoder = decoder_lib.CaptionDecoder(
          t.tower or blk, cfg.decoder_depth, t.option("vocab_size"), name="caption_decoder")
    texts = [m for m in cfg.modalities if m.kind == "text"]
    self.lm_heads = {m.name: dense(m.option("vocab_size"), f"lm_head_{m.name}",
                                   ("embed", "vocab")) for m in texts[:1] if "prefix_lm" in heads}
    self.lm_norms = {m: nn.LayerNorm(dtype=blk.dtype, param_dtype=blk.param_dtype,
                                     name=f"lm_ln_{m}") for m in self.lm_heads}
    self.frame_order_heads = {
        m.name: dense(self.frame_groups(m.name), f"frame_order_head_{m.name}")
        for m in cfg.modalities if m.kind == "video" and "frame_order" in heads}
    self.sentence_order_heads = {m.name: dense(cfg.order_segments, f"sentence_order_head_{m.name}")
                                 for m in texts[:1] if "sentence_order" in heads}
    regions = [m for m in cfg.modalities if m.kind == "regions"]
    self.mrc_heads = {m.name: dense(m.region_classes, f"mrc_head_{m.name}")
                      for m in regions if "mrc" in heads}
    self.mrfr_heads = {m.name: dense(m.feature_dim, f"mrfr_head_{m.name}")
                       for m in regions if "mrfr" in heads}
    # CLIP temperature (log scale), SigLIP temperature and bias.
    if "contrastive" in heads:
      self.logit_scale = self.param("logit_scale",
                                    nn.initializers.constant(np.log(1 / 0.07)), ())
    if "sigmoid" in heads:
      self.sigmoid_t = self.param("sigmoid_t", nn.initializers.constant(np.log(10.0)), ())
      self.sigmoid_b = self.param("sigmoid_b", nn.initializers.constant(-10.0), ())

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
      return jnp.exp(self.sigmoid_t) * (za @ zb.T) + self.sigmoid_b
    return jnp.minimum(jnp.exp(self.logit_scale), 100.0) * (za @ zb.T)

  def itm_logits(self, joint):
    """[B, D'] -> [B, 2] (not matched, matched)."""
    if self.itm_head is None:
      raise ValueError("this model has no ITM head (model.objective_heads lacks 'itm')")
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
    if self.itm_head is not None:
      self.itm_logits(out["joint"])
    for m in self.mlm_heads:
      self.mlm_logits(m, out["tokens"][m])
    for m in self.mim_heads:
      self.mim_prediction(m, out["tokens"][m])
    if self.caption_decoder is not None:
      t = self.cfg.caption_text
      self.caption_logits(batch[t][:, :-1], *encoded[self.cfg.caption_source])
    for m in self.lm_heads:
      self.lm_logits(m, out["tokens"][m])
    for m in self.frame_order_heads:
      self.frame_order_logits(m, out["tokens"][m])
    for m, head in self.sentence_order_heads.items():
      head(out["tokens"][m])
    for heads in (self.mrc_heads, self.mrfr_heads):
      for m, head in heads.items():
        head(out["tokens"][m])
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
    return self.caption_decoder(tokens, memory, memory_mask, cache)

  def caption_memory(self, batch):
    """(tokens [B, Nm, D], mask [B, Nm]) the decoder reads: the caption source's tower output."""
    src = self.cfg.caption_source
    keep = {k: v for k, v in batch.items() if k in (src, f"{src}_valid")}
    return self.encode(self.embed(keep))[src]

  def lm_logits(self, modality: str, tokens):
    return self.lm_heads[modality](self.lm_norms[modality](tokens)).astype(jnp.float32)

  def frame_order_logits(self, modality: str, tokens):
    """Video stream tokens [B, (1 +) G*S, D] -> [B, G, G]: each tubelet group's tokens
    mean-pooled, then classified into its original group index."""
    start = 1 if self.embedders[modality].add_cls else 0
    g = self.frame_groups(modality)
    x = tokens[:, start:]
    x = x.reshape(x.shape[0], g, x.shape[1] // g, x.shape[2]).mean(axis=2)
    return self.frame_order_heads[modality](x).astype(jnp.float32)

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

  def pretraining_outputs(self, batch, rng, objectives: ObjectivesConfig) -> Dict[str, Any]:
    """One pass over `batch` producing what each active objective consumes:

      embeddings  {m: [B, E]} float32 pooled-tower projections     contrastive / sigmoid / ITM
      pairs       [(a, b), ...] every pair of modalities, in order  (alignment is per pair)
      logit_scale, sigmoid_t, sigmoid_b   the temperature / bias parameters
      itm         (logits [3B, 2], labels [3B]) on B positives and 2B hard negatives
                  re-paired from the encoded towers (the first two modalities)
      mlm         {m: (logits [B, L, V], targets [B, L], weights [B, L])}  BERT-masked text;
                  [R, L, ...] packed rows when the batch has `<m>_pack_index` (packed_mlm)
      mim         {m: (pred [B, N, P], target [B, N, P], weights [B, N])}  masked patches
      caption     (logits [B, L-1, V], targets [B, L-1], weights [B, L-1])  the decoder on
                  the caption source's tower output (teacher forcing; CapPa rows all [MASK])
      prefix_lm   (logits [B, L-1, V], targets, weights)  the joint stream under the prefix-LM
                  mask; weights only on suffix targets
      frame_order {m: (logits [B, G, G], targets [B, G], weights [B, G])}  shuffled groups
      sentence_order  {m: (logits [B, L, K], targets [B, L], weights [B, L])}
      mrc, mrfr   {m: (logits [B, N, C], detector dist [B, N, C], weights)},
                  {m: (pred [B, N, F], features [B, N, F], weights [B, N])}  masked regions
    Text masking uses the text embedder's special ids; rng draws every mask and negative.
    """
    active = set(objectives.active)
    mods = self.modalities
    rng_itm, rng_mlm, rng_mim = jax.random.split(rng, 3)
    out: Dict[str, Any] = {}
    encoded = None
    if (set(ALIGNMENT) | {"itm", "caption"}) & active:
      encoded = self.encode(self.embed(batch))
    if (set(ALIGNMENT) | {"itm"}) & active:
      emb = {m: z.astype(jnp.float32) for m, z in self.contrastive_embedding(encoded).items()}
      out.update(embeddings=emb, pairs=list(itertools.combinations(mods, 2)))
      if "contrastive" in self.cfg.objective_heads:
        out["logit_scale"] = self.logit_scale
      if "sigmoid" in self.cfg.objective_heads:
        out.update(sigmoid_t=self.sigmoid_t, sigmoid_b=self.sigmoid_b)
      if "itm" in active:
        out["itm"] = self._itm(encoded, emb, rng_itm)
    if "caption" in active:
      out["caption"] = self._caption(batch, encoded, jax.random.fold_in(rng, 11),
                                     objectives.cappa_fraction)
    if "prefix_lm" in active:
      out["prefix_lm"] = self._prefix_lm(batch, jax.random.fold_in(rng, 12),
                                         objectives.prefix_random)
    if {"frame_order", "sentence_order"} & active:
      out.update(self._ordering(batch, jax.random.fold_in(rng, 13), objectives))
    text = [m for m in mods if self.cfg.modality(m).kind == "text" and "mlm" in active]
    patches = [m for m in mods if self.cfg.modality(m).kind in PATCH_KINDS and "mim" in active]
    regions = [m for m in mods if self.cfg.modality(m).kind == "regions"
               and {"mrc", "mrfr"} & active]
    packed = [m for m in text if f"{m}_pack_index" in batch]
    if packed and not self.cfg.design.independent_streams:
      raise ValueError(f"packed text needs a fusion whose text tower is encoded on its own "
                       f"(dual_encoder); {self.cfg.fusion.name} mixes text with other tokens")
    if text or patches or regions:
      masked, mlm, mim, mim_masks = dict(batch), {}, {}, {}
      for m in text:
        emb_m = self.embedders[m]
        ids = batch[m]
        masked[m], targets, weights = masking.bert_mask(
            jax.random.fold_in(rng_mlm, mods.index(m)), ids, mask_prob=objectives.mlm_prob,
            mask_id=emb_m.mask_id, vocab_size=emb_m.vocab_size, special_ids=emb_m.special_ids,
            valid_mask=emb_m.token_mask(ids))  # the tokenizer's ids (config_lib.text_ids)
        mlm[m] = (targets, weights)
      for m in patches:
        target = self.mim_target(m, batch[m])
        mim_masks[m] = masking.random_patch_mask(
            jax.random.fold_in(rng_mim, mods.index(m)), target.shape[0], target.shape[1],
            objectives.mim_ratio)
        mim[m] = target
      for m in regions:
        x = batch[m]
        valid = x.get("mask", jnp.ones(x["features"].shape[:2], bool))
        mim_masks[m] = masking.random_patch_mask(
            jax.random.fold_in(rng_mim, 100 + mods.index(m)), valid.shape[0], valid.shape[1],
            objectives.mrm_ratio) & valid
      out["mlm"] = {m: self.packed_mlm(m, masked[m], batch[f"{m}_pack_index"], *mlm[m],
                                       batch.get(f"{m}_valid")) for m in packed}
      if packed:  # independent streams: the other towers' tokens are what interact returns
        keep = set(patches) | {f"{m}_valid" for m in patches}
        rest = {k: v for k, v in masked.items() if k in keep}
        fused = {"tokens": {m: t for m, (t, _) in self.encode(
            self.embed(rest, mim_masks)).items()}} if patches else {"tokens": {}}
      else:
        fused = self(masked, mim_masks)
      out["mlm"].update({m: (self.mlm_logits(m, fused["tokens"][m][:, :batch[m].shape[1]]),
                             *mlm[m]) for m in text if m not in packed})
      out["mim"] = {}
      for m in patches:
        start = 1 if self.embedders[m].add_cls else 0
        n = mim[m].shape[1]
        pred = self.mim_prediction(m, fused["tokens"][m][:, start:start + n])
        out["mim"][m] = (pred, mim[m], mim_masks[m].astype(jnp.float32))
      for m in regions:
        start = 1 if self.embedders[m].add_cls else 0
        x, w = batch[m], mim_masks[m].astype(jnp.float32)
        tokens = fused["tokens"][m][:, start:start + x["features"].shape[1]]
        if m in self.mrc_heads:
          if "label_dist" not in x:
            raise ValueError(f"loss_weights.mrc needs the detector's class distribution "
                             f"batch['{m}']['label_dist'] [B, N, C]; give it or set mrc=0")
          out.setdefault("mrc", {})[m] = (self.mrc_heads[m](tokens).astype(jnp.float32),
                                          x["label_dist"], w)
        if m in self.mrfr_heads:
          out.setdefault("mrfr", {})[m] = (self.mrfr_heads[m](tokens).astype(jnp.float32),
                                           x["features"], w)
    return out

  def _real_tokens(self, modality: str, ids):
    """[B, L] bool: the text tokens that are real (key_mask 'none' attends to padding, so its
    padding is told apart by the pad id here)."""
    emb = self.embedders[modality]
    return emb.token_mask(ids) if emb.key_mask != "none" else ids != emb.pad_id

  def _shuffle_frames(self, modality: str, video, rng, ratio: float):
    """(video with `ratio` of its tubelet groups shuffled, perm [B, G], shuffled [B, G])."""
    perm, moved = ordering.frame_permutation(rng, video.shape[0], self.frame_groups(modality),
                                             ratio)
    t = tuple(self.embedders[modality].tubelet)[0]
    return ordering.permute_frames(video, perm, t), perm, moved

  def _prefix_stream(self, batch, prefix):
    """The text tokens [B, L, D] of the joint stream under the prefix-LM mask, the text's
    first `prefix` [B] tokens being the prefix."""
    t = self.cfg.caption_text
    pos = {t: decoder_lib.prefix_positions(prefix, batch[t].shape[1])}
    fused = self.fusion.interact(self.fusion.encode(self.embed(batch), None, pos), pos)
    return fused["tokens"][t][:, :batch[t].shape[1]]

  def _caption(self, batch, encoded, rng, cappa_fraction: float):
    """Teacher-forced captioning of the caption source (decoder.teacher_forcing). A fraction
    of rows (CapPa) sees only [MASK] inputs: with inputs that carry no content, causal and
    full attention see the same information (memory and positions), so the same decoder
    does parallel prediction and its one forward pass decodes them."""
    t = self.cfg.caption_text
    emb, ids = self.embedders[t], batch[t]
    mask = self._real_tokens(t, ids)
    valid = batch.get(f"{t}_valid")
    if valid is not None:
      mask = mask & valid[:, None]
    inputs, targets, weights = decoder_lib.teacher_forcing(ids, mask)
    if cappa_fraction > 0:
      parallel = jax.random.bernoulli(rng, cappa_fraction, (ids.shape[0],))
      fill = emb.mask_id if emb.mask_id >= 0 else emb.pad_id
      inputs = jnp.where(parallel[:, None], jnp.asarray(fill, inputs.dtype), inputs)
    logits, _ = self.caption_logits(inputs, *encoded[self.cfg.caption_source])
    return logits, targets, weights

  def _prefix_lm(self, batch, rng, random_prefix: bool):
    """Prefix-LM (SimVLM): the joint stream over [other modalities; text] with the mask of
    decoder.prefix_positions; the text prefix is [CLS] plus, with random_prefix, a uniform
    1..n-2 more tokens of the n real ones; the loss is on next-token targets in the suffix."""
    t = self.cfg.caption_text
    ids = batch[t]
    length = ids.shape[1]
    mask = self._real_tokens(t, ids)
    n = jnp.sum(mask, axis=1).astype(jnp.int32)
    if random_prefix:  # prefix in [1, n - 1]: at least one target left in the suffix
      prefix = 1 + jnp.floor(jax.random.uniform(rng, n.shape) * jnp.maximum(n - 1, 1)).astype(
          jnp.int32)
    else:
      prefix = jnp.ones_like(n)
    logits = self.lm_logits(t, self._prefix_stream(batch, prefix)[:, :length - 1])
    after = jnp.arange(1, length, dtype=jnp.int32)[None, :] >= prefix[:, None]
    weights = (mask[:, 1:] & after).astype(jnp.float32)
    valid = batch.get(f"{t}_valid")
    if valid is not None:
      weights = weights * valid[:, None].astype(jnp.float32)
    return logits, ids[:, 1:], weights

  def frame_order_predictions(self, batch, rng, ratio: float, modality: str):
    """Evaluation: (logits [B, G, G], perm [B, G], shuffled [B, G]) on a batch whose video
    tubelet groups are shuffled (mmjax.ordering.frame_permutation with `rng`)."""
    video, perm, moved = self._shuffle_frames(modality, batch[modality], rng, ratio)
    shuffled = dict(batch, **{modality: video})
    return self.frame_order_logits(modality, self(shuffled)["tokens"][modality]), perm, moved

  def prefix_lm_logits(self, batch, ids, prefix):
    """Next-token logits [B, L, V] of text ids [B, L] whose first `prefix` [B] tokens are the
    prefix, read by the joint stream over [other modalities; text] (generation)."""
    t = self.cfg.caption_text
    return self.lm_logits(t, self._prefix_stream(dict(batch, **{t: ids}), prefix))

  def _ordering(self, batch, rng, objectives: ObjectivesConfig):
    """Frame ordering (HERO's FOM) and sentence ordering in one pass over a batch whose video
    tubelet groups and text segments are shuffled (mmjax.ordering); the heads predict each
    group's / token's original index."""
    active, shuffled, out = set(objectives.active), dict(batch), {}
    targets = {}
    for i, m in enumerate(self.frame_order_heads if "frame_order" in active else ()):
      shuffled[m], perm, moved = self._shuffle_frames(m, batch[m], jax.random.fold_in(rng, i),
                                                      objectives.frame_order_ratio)
      targets[m] = (perm, moved.astype(jnp.float32))
    texts = {}
    for i, m in enumerate(self.sentence_order_heads if "sentence_order" in active else ()):
      ids = batch[m]
      gather, tgt, w = ordering.segment_permutation(
          jax.random.fold_in(rng, 50 + i), self._real_tokens(m, ids), self.cfg.order_segments)
      shuffled[m] = jnp.take_along_axis(ids, gather, axis=1)
      texts[m] = (tgt, w)
    fused = self(shuffled)
    if targets:
      out["frame_order"] = {m: (self.frame_order_logits(m, fused["tokens"][m]), *targets[m])
                            for m in targets}
    if texts:
      out["sentence_order"] = {
          m: (self.sentence_order_heads[m](fused["tokens"][m][:, :batch[m].shape[1]]).astype(
              jnp.float32), *texts[m]) for m in texts}
    return out

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

  def _itm(self, encoded, emb, rng):
    """ITM with hard negatives: B positives, B (A_i, hard B) and B (hard A, B_j) negatives."""
    a, b = self.modalities[0], self.modalities[1]
    za, zb = l2_normalize(emb[a]), l2_normalize(emb[b])
    log_scale = (self.logit_scale if "contrastive" in self.cfg.objective_heads
                 else np.log(1 / 0.07))
    scale = jnp.exp(log_scale).clip(max=100.0)
    sim = jax.lax.stop_gradient(scale * (za @ zb.T))  # scaled: softmax over cosines is flat
    neg_b, neg_a = masking.itm_hard_negatives(rng, sim)
    take = lambda x, idx: jax.tree.map(lambda t: jnp.take(t, idx, axis=0), x)
    cat = lambda *xs: jax.tree.map(lambda *t: jnp.concatenate(t, axis=0), *xs)
    pairs = {m: cat(encoded[m], encoded[m], encoded[m]) for m in self.modalities}
    pairs[a] = cat(encoded[a], encoded[a], take(encoded[a], neg_a))
    pairs[b] = cat(encoded[b], take(encoded[b], neg_b), encoded[b])
    logits = self.itm_logits(self.interact(pairs)["joint"]).astype(jnp.float32)
    n = za.shape[0]
    labels = jnp.concatenate([jnp.ones((n,), jnp.int32), jnp.zeros((2 * n,), jnp.int32)])
    return logits, labels


def build_model(config) -> MultimodalModel:
  """MultimodalModel from a Config, a ModelConfig or a ConfigDict (its model and attention
  sections parsed and checked)."""
  return MultimodalModel(parse_model(config))


def dummy_batch(config, batch_size: int = 2) -> Dict[str, np.ndarray]:
  """A zero batch with the shapes the modalities expect (for init and summaries)."""
  model = parse_model(config)
  out = {}
  for mod in model.modalities:
    kind, shape, m = mod.kind, mod.input_shape, mod.name
    if kind == "text":
      ids = np.zeros((batch_size, mod.option("max_len")), np.int32)
      ids[:, 0] = 1
      out[m] = ids
    elif kind in PATCH_KINDS:
      out[m] = np.zeros((batch_size,) + shape, np.float32)
    elif kind == "regions":
      n = shape[0] if shape else 36
      out[m] = {"features": np.zeros((batch_size, n, mod.feature_dim), np.float32),
                "boxes": np.zeros((batch_size, n, 5), np.float32),
                "mask": np.ones((batch_size, n), bool)}
    else:
      n = shape[0] if shape else mod.option("max_len")
      out[m] = np.zeros((batch_size, n, mod.in_dim), np.float32)
  return out
