"""Objectives as registered objects, and the one pass over a batch that feeds them all.

An `Objective` states what it needs as data and computes its part of a step:

  name                   its loss_weights key
  survey_name            what the survey calls it
  default_head           its heads are built by model.objective_heads='all'; else only when
                         its loss weight is positive (or objective_heads names it)
  requires               {FusionDesign capability: why it is needed}: 'towers' asks
                         design.has_towers(modalities), any other is a design attribute
  masks                  what the shared masked pass corrupts for it: 'text', 'patches' or
                         'regions' (SharedPass.masked)
  check(model, objectives)           its own config rules (ValueError, one line)
  heads(model)                       {key: module or parameter}, built in the model's setup
                                     (base.dense and base.layer_norm build the usual ones)
  init(model, batch, encoded, out)   touches its heads so `init` creates their parameters
  outputs(model, shared)             what its loss reads, inside model.apply
  losses(outputs, objectives, mesh)  {loss name: (loss, metrics)}, outside the model
  cache(model, shared), cached_losses(cached, objectives, mesh, run)
                                     optional (cacheable = True): a loss that needs the whole
                                     batch inside the model (ITM's hard negatives, mined over
                                     every example, then re-paired through the interaction).
                                     Exact gradient accumulation caches cache()'s per-example
                                     outputs and runs the model part in cached_losses through
                                     `run` (a CachedRun), chunk by chunk
  batch_keys             data keys beyond the model's inputs that its outputs read (LocCa's
                         regions); the trainer passes them into the step
  teacher_key, teacher(model, batch)
                         optional: what an EMA teacher computes for it (without gradient,
                         inside model.apply with the teacher's parameters; teacher_outputs);
                         the train step puts it in the batch under teacher_key

Registration order is the order outputs are computed and losses summed; the built-ins register
alignment, matching, describing, ordering, region and masked modelling, in that order. A new
objective is one file: subclass Objective, decorate it with `@register`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from mmjax import sharding
from mmjax.objectives.losses import LossAndMetrics, Metrics, combine_losses
from mmjax.registry import Registry
from mmjax.fusion import design_of
from mmjax import tokenizers
from mmjax.tokenizers import PATCH_KINDS


class Objective:
  """One pretraining objective (see the module docstring). Instances hold no state."""
  name: str = ""
  survey_name: str = ""
  default_head: bool = False
  requires: Mapping[str, str] = {}
  masks: Tuple[str, ...] = ()
  cacheable: bool = False  # has cache / cached_losses (exact gradient accumulation)
  batch_keys: Tuple[str, ...] = ()
  teacher_key: str = ""     # has teacher(): distils from the EMA of the parameters

  def check(self, model, objectives) -> None:
    """Raise ValueError (one line: the problem and the fix) for a config it cannot train."""

  def heads(self, model) -> Dict[str, Any]:
    """Its heads, built inside MultimodalModel.setup, each with its explicit parameter name
    (the name is what a checkpoint stores)."""
    return {}

  def init(self, model, batch, encoded, out) -> None:
    """Calls its heads once (MultimodalModel.init_all), so `init` creates them."""

  def outputs(self, model, shared: "SharedPass") -> Any:
    """What its loss reads: arrays with a leading example axis, or values that do not depend
    on the examples (gradient accumulation joins the first kind over micro-batches)."""
    raise NotImplementedError

  def losses(self, outputs, objectives, mesh=None) -> Dict[str, LossAndMetrics]:
    raise NotImplementedError

  def teacher(self, model, batch) -> Any:
    """Objectives with a teacher_key: the teacher's per-example outputs on `batch`."""
    raise NotImplementedError

  def cache(self, model, shared: "SharedPass") -> Any:
    """cacheable objectives: the per-example inputs of cached_losses, inside model.apply."""
    raise NotImplementedError

  def cached_losses(self, cached, objectives, mesh, run: "CachedRun"
                    ) -> Dict[str, LossAndMetrics]:
    """cacheable objectives: losses() of the whole batch from cache()'s outputs joined over
    the micro-batches, running the model through `run`."""
    raise NotImplementedError


class CachedRun:
  """How a cached loss runs the model (mmjax.accumulation, exact mode): apply(fn, *args, rng)
  is model.apply(params, *args, method=fn) with a 'dropout' rng; `chunks` splits a batch of
  rows into that many strided pieces, each recomputed in the backward pass (one micro-batch's
  memory); rng is the step's key (the one SharedPass draws its streams from)."""

  def __init__(self, apply, chunks: int, rng, mesh=None, unroll: bool = False):
    self.apply, self.chunks, self.rng, self.mesh, self.unroll = apply, chunks, rng, mesh, unroll

  def rows(self, fn, tree, rng):
    """fn(model, tree_chunk) over `chunks` strided chunks of `tree` (leading axis R, R % chunks
    == 0; sharding.strided_chunks): the results joined back in row order. Chunk i runs with
    fold_in(rng, i) and is rematerialized in the backward pass."""
    k = self.chunks
    body = jax.checkpoint(lambda _, xs: (None, self.apply(fn, xs[0],
                                                          rng=jax.random.fold_in(rng, xs[1]))))
    chunks = jax.tree.map(lambda x: sharding.strided_chunks(x, k, self.mesh), tree)
    _, out = jax.lax.scan(body, None, (chunks, jnp.arange(k)), unroll=k if self.unroll else 1)
    return jax.tree.map(sharding.join_chunks, out)


_CLASSES = Registry("objective", "objective", Objective)
_REGISTRY: Dict[str, Objective] = {}  # one instance of each registered class, by name


def dense(model, features: int, name: str, axes=("embed", None), bias: bool = True):
  """The model's Dense head: its dtypes, lecun-normal kernel with logical axes `axes`."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  blk = model.cfg.block
  return nn.Dense(features, dtype=blk.dtype, param_dtype=blk.param_dtype, name=name,
                  use_bias=bias, kernel_init=nn.with_logical_partitioning(
                      nn.initializers.lecun_normal(), axes))


def layer_norm(model, name: str):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  blk = model.cfg.block
  return nn.LayerNorm(dtype=blk.dtype, param_dtype=blk.param_dtype, name=name)


def register(cls):
  """Class decorator: adds an Objective subclass to the registry under `cls.name`."""
  _CLASSES.register(cls)
  if not isinstance(_REGISTRY.get(cls.name), cls):
    _REGISTRY[cls.name] = cls()
  return cls


def get(name: str) -> Objective:
  """The objective registered as `name` (its one instance)."""
  return _REGISTRY[_CLASSES.get(name).name]


def names() -> Tuple[str, ...]:
  return _CLASSES.names()


def default_heads() -> Tuple[str, ...]:
  """The heads model.objective_heads='all' builds."""
  return tuple(n for n, o in _REGISTRY.items() if o.default_head)


def registered(which: Sequence[str]) -> List[Objective]:
  """The registered objectives named in `which`, in registration order."""
  which = set(which)
  return [o for n, o in _REGISTRY.items() if n in which]


def batch_keys(active: Sequence[str]) -> Tuple[str, ...]:
  """The data keys the objectives named in `active` read beyond the model's inputs."""
  return tuple(k for o in registered(active) for k in o.batch_keys)


def needs_teacher(objectives) -> bool:
  """Whether an active objective distils from the EMA teacher (teacher_key)."""
  return any(o.teacher_key for o in registered(objectives.active))


def teacher_outputs(model, batch, objectives) -> Dict[str, Any]:
  """{teacher_key: teacher(model, batch)} of the active objectives that have a teacher (call
  inside model.apply with the teacher's parameters: MultimodalModel.teacher_outputs)."""
  return {o.teacher_key: o.teacher(model, batch) for o in registered(objectives.active)
          if o.teacher_key}


def extra_heads(weights: Mapping[str, float], heads: Sequence[str]) -> Tuple[str, ...]:
  """The heads `heads` lacks that the positively weighted objectives need built."""
  return tuple(n for n, o in _REGISTRY.items()
               if not o.default_head and float(weights.get(n, 0.0)) > 0 and n not in heads)


# ------------------------------------------------------------------------------ checks

def capability(design, name: str, modalities) -> bool:
  if name == "towers":
    return design.has_towers(modalities)
  return bool(getattr(design, name))


def check_weights(design, weights: Mapping[str, float]) -> Tuple[str, ...]:
  """The positively weighted objectives of `weights` (name -> float); ValueError for unknown
  names, weights that are not finite and >= 0, and for none at all."""
  unknown = sorted(k for k in weights if k not in _REGISTRY)
  if unknown:
    raise ValueError(f"unknown objective(s) {unknown} in the loss weights; valid names are "
                     f"{list(_REGISTRY)}")
  for k, w in weights.items():
    if not (math.isfinite(float(w)) and float(w) >= 0):
      raise ValueError(f"loss weight {k}={w} must be a finite number >= 0")
  active = tuple(k for k in _REGISTRY if float(weights.get(k, 0.0)) > 0)
  if not active:
    raise ValueError(f"no objective has a positive weight; set at least one of "
                     f"loss_weights.{{{','.join(_REGISTRY)}}} > 0 for fusion {design.name}")
  return active


def check(model, objectives) -> None:
  """Every active objective against the model (a ModelConfig) and its settings: the design
  capabilities it requires, its head, then its own rules. ValueError, one line."""
  design, name = design_of(model), model.fusion.name
  for o in registered(objectives.active):
    for cap, why in o.requires.items():
      if not capability(design, cap, model.names):
        raise ValueError(f"objective {o.name!r} is not available with fusion {name!r}: "
                         + why.format(design=name, name=o.name))
    if o.default_head and o.name not in model.objective_heads:
      raise ValueError(f"loss_weights.{o.name} > 0 but the model has no {o.name} head "
                       f"(model.objective_heads={list(model.objective_heads)}); add it there")
    o.check(model, objectives)


# ------------------------------------------------------------------------------ shared pass

class SharedPass:
  """What several objectives read in one step, each computed once, on first use, inside
  model.apply:

    clean()          {m: (tokens [B, N, D], mask [B, N])} the towers on the batch as given
    embeddings()     {m: [B, E] float32} the contrastive embeddings of clean()
    masked()         Masked: the batch with every active objective's masks applied
    masked_tokens()  {m: [B, N, D]} what the model returns per modality on masked()
    rng_itm, rng_mlm, rng_mim, rng   the step's random streams
  Objectives may memoize their own shared pieces with `once(key, fn)`.
  """

  def __init__(self, model, batch, rng, objectives, active: Sequence[Objective]):
    self.model, self.batch, self.config, self.rng = model, batch, objectives, rng
    self.active = tuple(o.name for o in active)
    self.rng_itm, self.rng_mlm, self.rng_mim = streams(rng)
    self.mask_kinds = {k for o in active for k in o.masks}
    self._memo: Dict[str, Any] = {}

  def once(self, key: str, fn):
    if key not in self._memo:
      self._memo[key] = fn()
    return self._memo[key]

  def clean(self):
    return self.once("clean", lambda: self.model.encode(self.model.embed(self.batch),
                                                        tower_packs(self.model, self.batch)))

  def embeddings(self):
    return self.once("embeddings", lambda: {
        m: z.astype("float32") for m, z in self.model.contrastive_embedding(self.clean()).items()})

  def masked(self) -> "Masked":
    return self.once("masked", lambda: mask_batch(self.model, self.batch, self.config,
                                                  self.mask_kinds, self.rng_mlm, self.rng_mim))

  def masked_tokens(self):
    return self.once("masked_tokens", lambda: masked_forward(self.model, self.masked()))


def streams(rng):
  """(itm, mlm, mim): the step's random streams (SharedPass; exact accumulation's ITM)."""
  return tuple(jax.random.split(rng, 3))


def tower_packs(model, batch) -> Dict[str, Any]:
  """{m: index [R, L]} of the patch modalities whose towers run packed (objectives.pack_images
  adds `<m>_pack_index`; text's own index is the MLM pass's)."""
  return {m: batch[f"{m}_pack_index"] for m in model.modalities
          if model.cfg.modality(m).kind in PATCH_KINDS and f"{m}_pack_index" in batch}


class Masked:
  """The masked pass's inputs: batch (masked ids), text {m: (targets, weights)} (BERT masks),
  patches {m: target [B, N, P]}, masks {m: bool [B, N]} (patches and regions), packed (the
  text modalities packed into rows, mmjax.packing)."""

  def __init__(self, batch, text, patches, masks, packed):
    self.batch, self.text, self.patches, self.masks, self.packed = (batch, text, patches,
                                                                   masks, packed)


def mask_batch(model, batch, objectives, kinds, rng_text, rng_patches) -> Masked:
  """BERT masks on text (with 'text' in kinds), random patch masks on image / video / audio
  ('patches') and on regions ('regions'); each modality's stream is fold_in(rng, its index)
  (regions: 100 + index)."""
  from mmjax import masking  # pylint: disable=import-outside-toplevel
  mods, cfg = model.modalities, model.cfg
  kind = lambda m: cfg.modality(m).kind
  text = [m for m in mods if kind(m) == "text" and "text" in kinds]
  patches = [m for m in mods if kind(m) in PATCH_KINDS and "patches" in kinds]
  regions = [m for m in mods if kind(m) == "regions" and "regions" in kinds]
  packed = [m for m in text if f"{m}_pack_index" in batch]
  if packed and not design_of(cfg).independent_streams:
    raise ValueError(f"packed text needs a fusion whose text tower is encoded on its own "
                     f"(dual_encoder); {cfg.fusion.name} mixes text with other tokens")
  masked, targets, masks, images = dict(batch), {}, {}, {}
  for m in text:
    emb = model.embedders[m]
    ids = batch[m]
    masked[m], t, w = masking.bert_mask(
        jax.random.fold_in(rng_text, mods.index(m)), ids, mask_prob=objectives.mlm_prob,
        mask_id=emb.mask_id, vocab_size=emb.vocab_size, special_ids=emb.special_ids,
        valid_mask=emb.token_mask(ids))  # the tokenizer's ids (configure.text_ids)
    targets[m] = (t, w)
  for m in patches:
    target = model.mim_target(m, batch[m])
    masks[m] = masking.random_patch_mask(jax.random.fold_in(rng_patches, mods.index(m)),
                                         target.shape[0], target.shape[1], objectives.mim_ratio)
    images[m] = target
  for m in regions:
    x = batch[m]
    valid = x.get("mask", jax.numpy.ones(x["features"].shape[:2], bool))
    masks[m] = masking.random_patch_mask(
        jax.random.fold_in(rng_patches, 100 + mods.index(m)), valid.shape[0], valid.shape[1],
        objectives.mrm_ratio) & valid
  return Masked(masked, targets, images, masks, packed)


def masked_forward(model, mk: Masked):
  """{m: tokens} of the model on the masked batch. With packed text (independent streams) the
  text towers run packed in the MLM objective, so only the patch towers run here."""
  if not mk.packed:
    return model(mk.batch, mk.masks)["tokens"]
  keep = {k for m in mk.patches for k in tokenizers.input_keys(m)}
  rest = {k: v for k, v in mk.batch.items() if k in keep}
  if not mk.patches:
    return {}
  return {m: t for m, (t, _) in model.encode(model.embed(rest, mk.masks)).items()}


def stream_start(model, modality: str) -> int:
  """1 where the modality's embedder puts a [CLS] token first, else 0."""
  return 1 if model.embedders[modality].add_cls else 0


def per_modality(objective: str, outputs: Mapping[str, Any], fn) -> Dict[str, LossAndMetrics]:
  """{'<objective>' or '<objective>_<m>': fn(*outputs[m])}: the bare name with one modality."""
  return {objective if len(outputs) == 1 else f"{objective}_{m}": fn(*args)
          for m, args in outputs.items()}


# ------------------------------------------------------------------------------ the step

def pretraining_outputs(model, batch, rng, objectives, cached: bool = False) -> Dict[str, Any]:
  """{objective name: its outputs} for every active objective, from one SharedPass (call it
  inside model.apply: MultimodalModel.pretraining_outputs); cached=True: a cacheable
  objective's cache() instead (exact gradient accumulation)."""
  active = registered(objectives.active)
  shared = SharedPass(model, batch, rng, objectives, active)
  return {o.name: o.cache(model, shared) if cached and o.cacheable else o.outputs(model, shared)
          for o in active}


def losses_from_outputs(outputs: Mapping[str, Any], objectives, mesh=None,
                        run: Optional[CachedRun] = None) -> Tuple[jax.Array, Metrics]:
  """(weighted total, metrics) of pretraining_outputs: each objective's losses weighted by
  objectives.weight(<objective>), summed in registration order (combine_losses). run: the
  outputs are pretraining_outputs(cached=True)'s, whose cacheable objectives' losses run the
  model through it."""
  results: Dict[str, LossAndMetrics] = {}
  weights: Dict[str, float] = {}
  for o in registered(outputs):
    parts = (o.cached_losses(outputs[o.name], objectives, mesh, run)
             if run is not None and o.cacheable else o.losses(outputs[o.name], objectives, mesh))
    for name, value in parts.items():
      results[name] = value
      weights[name] = objectives.weight(o.name)
  return combine_losses(results, weights)


def _traced(tree) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def pretraining_loss(model, params, batch, rng, objectives, mesh=None, train: bool = True
                     ) -> Tuple[jax.Array, Metrics]:
  """(weighted loss, metrics) of every objective weighted > 0 on `batch`: the model's
  pretraining outputs mapped to their losses. `objectives` is an ObjectivesConfig or a parsed
  Config (its objectives); `mesh` (optional) spreads the alignment losses over
  the global batch. train=True: dropout and patch dropout on, their masks from
  fold_in(rng, 7); train=False: off (evaluation). Inside a trace (a train step) it
  is traced; called on concrete arrays it compiles itself as one program first."""
  objectives = getattr(objectives, "objectives", objectives)  # a parsed Config
  if not hasattr(objectives, "weight"):
    raise TypeError(f"pretraining_loss takes the parsed config (mmjax.parse_config(config)) or "
                    f"its objectives section, not {type(objectives).__name__}")
  if not _traced((params, batch, rng)):
    return _compiled(model, params, batch, rng, objectives, mesh, train)

  outputs = pretraining_outputs_of(model, params, batch, rng, objectives, train)
  return losses_from_outputs(outputs, objectives, mesh)


def pretraining_outputs_of(model, params, batch, rng, objectives, train: bool = True,
                           cached: bool = False) -> Dict[str, Any]:
  """model.apply of pretraining_outputs with `params`; train=True: dropout (and patch
  dropout) on, drawn from fold_in(rng, 7); cached as in pretraining_outputs."""
  return model.apply(params, batch, rng, objectives, cached, method=model.pretraining_outputs,
                     rngs={"dropout": jax.random.fold_in(rng, 7)} if train else {})


def _numeric(v) -> bool:
  import numpy as np  # pylint: disable=import-outside-toplevel
  dtype = v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
  return np.dtype(dtype).kind in "biuf"  # a dtype's truth value is its field count: no `or`


def _compiled(model, params, batch, rng, objectives, mesh, train):
  """pretraining_loss as one jit program: numeric batch entries traced, the rest (strings,
  paths) Python constants."""
  traced = {k: v for k, v in batch.items() if _numeric(v)}
  rest = {k: v for k, v in batch.items() if k not in traced}
  return jax.jit(lambda p, b, r: pretraining_loss(model, p, {**b, **rest}, r, objectives, mesh,
                                                  train))(params, traced, rng)


def objective_of(name: str) -> Optional[Objective]:
  """The registered objective a loss name ('mlm_text', 'contrastive_image_text') belongs to."""
  for n in sorted(_REGISTRY, key=len, reverse=True):
    if name == n or name.startswith(n + "_"):
      return _REGISTRY[n]
  return None
