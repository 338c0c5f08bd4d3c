"""One typed config: frozen dataclasses parsed from the ConfigDict at the entry points.

Config files stay plain Python returning an `ml_collections.ConfigDict` (configs/), and
train.py / eval.py keep the `--config.KEY=VALUE` syntax. This module is a leaf: it imports
no jax and no other mmjax module but the data layer's key table, so reading a config costs
nothing. Each default is a dataclass field's default below, stated once; config files hold
only what differs. Two steps, each failing with one line naming the problem and the fix
(`ConfigError`):

  parse(config)              the sections typed, unknown keys and bad values rejected
  configure.resolve(config)  (mmjax/configure.py) parse, then the cross-layer checks against
                             the registries: fusion design, objectives, embedders, attention
                             backend, tokenizer ids, token lengths, the mesh

  Config
    model       ModelConfig: fusion (FusionConfig), block (BlockConfig), modalities
                (ModalityConfig each), embed_dim
    objectives  ObjectivesConfig: loss weights, masking rates
    optimizer   OptimizerConfig          mesh        MeshConfig
    checkpoint  CheckpointConfig         eval        EvalConfig
    data        the data layer's own resolved ConfigDict (mmjax/data/config.py owns its keys)
    source      the ConfigDict it was parsed from (saved beside every checkpoint)
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import ml_collections

# The chunked attention path's chunk (attention.chunk_size): the one place it is stated.
CHUNK_SIZE = 512
SEVERITY_LEVELS = 3  # robustness corruptions: severities 1..SEVERITY_LEVELS
# Compute / parameter dtypes by name (layers hand the names to flax and jax as they are).
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# Modality-config keys that describe the data (not embedder options), and that size a tower.
DATA_KEYS = ("kind", "input_shape", "channels", "feature_dim", "in_dim", "region_classes")
TOWER_KEYS = ("width", "heads", "mlp_dim", "causal", "activation", "norm_eps", "key_bias")
# Modality keys of the model around the tower: its pooling, its contrastive projection.
HEAD_KEYS = ("pool", "proj", "proj_bias")
MODALITY_POOLS = ("cls", "mean", "last", "map")
DEPTH_KEYS = ("unimodal", "joint", "post", "cross")
# Embedder dataclass fields that the model sets, not the modality config.
EMBEDDER_OWN = ("parent", "name", "width", "dtype", "param_dtype")
# Keys older configs carry, not fields of Config (eval_every_steps: read as eval.every_steps).
IGNORED_KEYS = ("eval_every_steps",)
# Keys that record where a config came from (mmjax.convert), for people, not for the code.
INFO_KEYS = ("converted_from",)


class ConfigError(ValueError):
  """A bad config value or combination (the message is one line)."""


# ------------------------------------------------------------------------------ sections

def dtype_name(dtype) -> str:
  """'float32' for 'float32', jnp.float32, np.dtype('float32') or bfloat16's scalar type."""
  if isinstance(dtype, str):
    return dtype
  return str(getattr(getattr(dtype, "dtype", dtype), "name", dtype))


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """What every transformer block needs to know (hashable, so modules can hold it)."""
  width: int
  num_heads: int
  mlp_dim: int
  attention_impl: str = "auto"  # a key of mmjax.attention.IMPLS
  chunk_size: int = CHUNK_SIZE
  capture_weights: bool = False
  dtype: str = "float32"        # compute dtype, a name of DTYPE_NAMES (a dtype object is
  param_dtype: str = "float32"  # accepted and stored by its name)
  remat: str = "none"           # a key of mmjax.layers.REMAT_POLICIES
  scan: bool = False
  dropout: float = 0.0
  patch_dropout: float = 0.0  # fraction of patch tokens dropped per example in training (FLIP)
  # Options that published architectures need (CLIP, SigLIP, open_clip), defaults unchanged:
  activation: str = "gelu_tanh"  # MLP nonlinearity, a key of mmjax.layers.ACTIVATIONS
  norm_eps: float = 1e-6         # LayerNorm epsilon (CLIP: 1e-5)
  key_bias: bool = False         # a bias on K (softmax ignores it; kept for exact imports)
  causal: bool = False           # token i attends to tokens <= i only (CLIP's text tower)

  def __post_init__(self):
    for k in ("dtype", "param_dtype"):
      object.__setattr__(self, k, dtype_name(getattr(self, k)))
      if getattr(self, k) not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {getattr(self, k)!r} for model.{k}; choose one of "
                         f"{', '.join(DTYPE_NAMES)}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
    if not 0.0 <= self.patch_dropout < 1.0:
      raise ValueError(f"model.patch_dropout={self.patch_dropout} must be in [0, 1) (the "
                       "fraction of patch tokens dropped in training; FLIP uses 0.5 to 0.75)")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  """Stage depths are separate, so designs compare at matched parameters or FLOPs. The design
  object of a config is `mmjax.fusion.design_of(config)`."""
  name: str = "early_concat"
  unimodal_depth: Tuple[Tuple[str, int], ...] = ()  # per-modality tower depth (Tf1, Tf2)
  joint_depth: int = 0        # joint single stream (Tf / Tf3) or bottleneck fusion layers
  post_depth: int = 0         # hier_one_to_multi's per-stream stage (Tf2, Tf3)
  cross_depth: int = 0        # cross_attention / cross_to_concat co-attention layers
  cross_mode: str = "pure"    # pure (cross -> FFN) | self_cross (self -> cross -> FFN)
  share_cross: bool = False   # LXMERT: one cross-attention serves every direction
  early_sum_weights: str = "fixed"  # fixed (a = b = 1) | learned
  early_sum_align: str = "none"     # none (equal lengths required) | pad (to the longest)
  num_bottlenecks: int = 4
  pool: str = "cls"           # cls (first token of the stream) | mean (over valid tokens)
  pool_combine: str = "concat"  # two-stream joint: concat | product | sum

  def depth_of(self, modality: str) -> int:
    return dict(self.unimodal_depth).get(modality, 0)


@dataclasses.dataclass(frozen=True)
class ModalityConfig:
  """One modality: its kind, the data shape, its embedder's options, its own tower size."""
  name: str
  kind: str
  options: Tuple[Tuple[str, Any], ...] = ()  # embedder options (patch, grid, vocab_size, ...)
  input_shape: Tuple[int, ...] = ()
  channels: int = 3
  feature_dim: int = 2048
  in_dim: int = 16
  region_classes: int = 0  # regions: the detector's classes (masked region classification)
  tower: Optional[BlockConfig] = None  # set when width / heads / mlp_dim / ... are its own
  pool: str = ""          # cls | mean | last | map (attention-pool head); '' = model.pool
  proj: bool = True       # contrastive projection proj_<m>; False: the pooled tower itself
  proj_bias: bool = True
  # The embedder's own defaults for every option, filled in by configure.resolve.
  defaults: Tuple[Tuple[str, Any], ...] = dataclasses.field(default=(), compare=False,
                                                             repr=False)

  def option(self, key: str):
    """An embedder option: the config's value, else the embedder's own default."""
    for table in (self.options, self.defaults):
      for k, v in table:
        if k == key:
          return v
    if not self.defaults:
      raise ConfigError(f"modality {self.name!r} is not resolved, so its embedder's default "
                        f"{key!r} is unknown; build the config with mmjax.configure.resolve")
    raise ConfigError(f"modality {self.name!r} ({self.kind}) has no option {key!r}")

  @property
  def patch_dim(self) -> int:
    """Values in one masked-modelling target (one patch, tubelet or feature vector)."""
    if self.kind == "image":
      return self.option("patch") ** 2 * self.channels
    if self.kind == "video":
      t, p1, p2 = self.option("tubelet")
      return t * p1 * p2 * self.channels
    if self.kind == "audio":
      pt, pf = self.option("patch")
      return pt * pf
    return self.feature_dim if self.kind == "regions" else self.in_dim


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  fusion: FusionConfig
  block: BlockConfig
  modalities: Tuple[ModalityConfig, ...]
  embed_dim: int = 128
  # The objectives whose heads are built (an imported CLIP: contrastive only); 'all' (kept as
  # ('all',) by parse) is every objective declaring default_head; resolve adds the others
  # whose loss weight is > 0.
  objective_heads: Tuple[str, ...] = ("contrastive", "sigmoid", "itm", "mlm", "mim")
  decoder_depth: int = 2      # captioning decoder layers (mmjax.decoder), with 'caption'
  caption_from: str = ""      # the modality the decoder reads ('' = the first non-text one)
  order_segments: int = 3     # sentence ordering: text bodies cut into this many segments
  loc_bins: int = 100         # LocCa: location tokens per box coordinate (decoder vocab + bins)
  prototypes: int = 1024      # SILC / TIPS: the self-distillation heads' output classes

  @property
  def caption_text(self) -> str:
    """The text modality that captions / prefix-LM / sentence ordering work on (the first)."""
    return next((m.name for m in self.modalities if m.kind == "text"), "")

  @property
  def caption_source(self) -> str:
    return self.caption_from or next((m.name for m in self.modalities if m.kind != "text"), "")

  @property
  def names(self) -> Tuple[str, ...]:
    return tuple(m.name for m in self.modalities)

  def modality(self, name: str) -> ModalityConfig:
    return {m.name: m for m in self.modalities}[name]

  @property
  def tower_blocks(self) -> Tuple[Tuple[str, BlockConfig], ...]:
    return tuple((m.name, m.tower) for m in self.modalities if m.tower is not None)


@dataclasses.dataclass(frozen=True)
class ObjectivesConfig:
  weights: Tuple[Tuple[str, float], ...] = (("contrastive", 1.0),)  # positive weights only
  mlm_prob: float = 0.15
  mim_ratio: float = 0.5
  norm_pix: bool = True
  # Multi-positive contrastive targets (UniCL): 'none' (InfoNCE), 'text' (identical text ids
  # are positives), 'label' (equal batch 'label's are positives). objectives.contrastive_loss.
  multi_positive: str = "none"
  # > 0: a fixed contrastive temperature (logit scale 1/temperature, at most 100) instead of
  # the learned, clamped logit_scale (initialised at 1/0.07).
  temperature: float = 0.0
  # Text packing for the MLM pass (mmjax.packing): short captions share rows of length L,
  # pack_rows rows per step (0 = batch_size, which always fits). Text-tower designs only.
  pack_text: bool = False
  pack_rows: int = 0
  # Native-aspect image packing (data.max_patches): the image tower runs on image_pack_rows
  # rows (0 = batch_size) of image_pack_len token slots (0 = 1 + max_patches, one image's),
  # several images per row, attention within each image (mmjax.packing). Designs with an
  # image tower.
  pack_images: bool = False
  image_pack_rows: int = 0
  image_pack_len: int = 0
  # Captioning (loss_weights.caption): the fraction of examples trained with CapPa's parallel
  # prediction (every decoder input a [MASK]) instead of teacher forcing.
  cappa_fraction: float = 0.0
  # Prefix-LM (loss_weights.prefix_lm): True draws the text prefix length per example
  # (SimVLM); False keeps only [CLS] in the prefix (the other modality is the prefix).
  prefix_random: bool = True
  frame_order_ratio: float = 0.5  # frame ordering: fraction of tubelet groups shuffled
  # LocCa (loss_weights.locca): the weights of its captioning, referring-expression and
  # grounded-captioning tasks (objectives/localization.py)
  locca_caption: float = 1.0
  locca_referring: float = 1.0
  locca_grounded: float = 1.0
  # SILC / TIPS (loss_weights.silc / tips; objectives/distillation.py): student and teacher
  # temperatures, local crops per image and their area range (fractions of the image)
  distill_student_temp: float = 0.1
  distill_teacher_temp: float = 0.04
  silc_crops: int = 2
  silc_crop_scale: Tuple[float, float] = (0.05, 0.4)
  tips_mask_ratio: float = 0.5
  # {objective: step}: an objective weighted > 0 trains only from its step on (SigLIP 2's late
  # SILC / TIPS phase); before it, the step's executable leaves it out (one more is compiled
  # when it starts)
  starts: Tuple[Tuple[str, int], ...] = ()
  mrm_ratio: float = 0.15         # masked region modelling: fraction of regions masked

  def weight(self, name: str) -> float:
    return dict(self.weights).get(name, 0.0)

  def at_step(self, step: int) -> "ObjectivesConfig":
    """The objectives that train at `step`: those whose start (starts) is > step left out."""
    start = dict(self.starts)
    return dataclasses.replace(self, weights=tuple(
        (k, w) for k, w in self.weights if start.get(k, 0) <= step))

  @property
  def active(self) -> Tuple[str, ...]:
    return tuple(k for k, _ in self.weights)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-3
  warmup_steps: int = 0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = 0.0
  end_lr_ratio: float = 0.0
  # EMA of the parameters after each applied step, ema = d * ema + (1 - d) * params (0: off);
  # kept in the optimizer state, so it is checkpointed and resumed with it
  ema_decay: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.ema_decay < 1.0:
      raise ConfigError(f"optimizer.ema_decay={self.ema_decay} must be in [0, 1) (0: no EMA; "
                        "0.999 is a common choice)")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 1000
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  evaluators: Tuple[str, ...] = ("zero_shot", "retrieval", "itm", "mlm", "mim")
  every_steps: int = 0  # evaluate during training every N steps (0: off); legacy eval_every_steps
  use_ema: bool = False  # evaluate the EMA parameters (a run with optimizer.ema_decay > 0)
  batch_size: int = 100
  num_examples: int = 1000
  # linear_probe: logistic regression on frozen embeddings of this many train examples; its
  # L2 strength is chosen from probe_l2 on a probe_holdout fraction of them, then refit.
  probe_train_examples: int = 2000
  probe_l2: Tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
  probe_holdout: float = 0.2
  # caption: greedy (beam 1) or beam search with GNMT length penalty alpha; max_len 0 =
  # data.text_len
  caption_beam: int = 1
  caption_alpha: float = 0.0
  caption_max_len: int = 0
  # robustness: these metrics ('<evaluator>/<metric>') with each modality absent and corrupted
  # by each corruption of its kind (all when empty) at these severities (1..3)
  robustness_metrics: Tuple[str, ...] = ("zero_shot/accuracy", "retrieval/a2b_R@10",
                                         "retrieval/b2a_R@10", "itm/pairwise_accuracy")
  robustness_corruptions: Tuple[str, ...] = ()
  robustness_severities: Tuple[int, ...] = tuple(range(1, SEVERITY_LEVELS + 1))

  def __post_init__(self):
    if self.caption_beam < 1 or self.caption_max_len < 0:
      raise ConfigError(f"eval.caption_beam={self.caption_beam} must be >= 1 and "
                        f"eval.caption_max_len={self.caption_max_len} >= 0 (0 = data.text_len)")
    if self.probe_train_examples < 2:
      raise ConfigError(f"eval.probe_train_examples={self.probe_train_examples} must be >= 2")
    if not self.probe_l2 or min(self.probe_l2) <= 0:
      raise ConfigError(f"eval.probe_l2={self.probe_l2} must be a non-empty list of positive "
                        "numbers")
    if not self.robustness_severities or any(
        not 1 <= s <= SEVERITY_LEVELS for s in self.robustness_severities):
      raise ConfigError(f"eval.robustness_severities={self.robustness_severities} must be "
                        f"severities among 1..{SEVERITY_LEVELS}")
    if not self.robustness_metrics or any("/" not in m for m in self.robustness_metrics):
      raise ConfigError(f"eval.robustness_metrics={self.robustness_metrics} must name metrics "
                        "as '<evaluator>/<metric>', e.g. zero_shot/accuracy")
    if not 0.0 < self.probe_holdout < 1.0:
      raise ConfigError(f"eval.probe_holdout={self.probe_holdout} must be in (0, 1)")


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig
  objectives: ObjectivesConfig
  optimizer: OptimizerConfig
  mesh: MeshConfig
  checkpoint: CheckpointConfig
  eval: EvalConfig
  data: Any = dataclasses.field(compare=False, hash=False, repr=False)
  source: Any = dataclasses.field(compare=False, hash=False, repr=False)
  seed: int = 0
  total_steps: int = 1000
  batch_size: int = 64
  grad_accum_steps: int = 1
  # how micro-batches combine (mmjax.accumulation): 'batch' the whole batch's loss and
  # gradients (every negative), 'micro' each micro-batch's own, averaged
  grad_accum_negatives: str = "batch"
  # the last N steps encode every patch (FLIP's unmasked tuning after model.patch_dropout)
  unmasked_steps: int = 0
  nan_policy: str = "stop"  # stop | skip
  log_every_steps: int = 25
  init_from: str = ""  # a workdir or <workdir>/checkpoints/<step>: its parameters, when fresh
  freeze: Tuple[str, ...] = ()  # modality names or parameter path prefixes left untrained
  imports: Tuple[str, ...] = ()  # user modules imported first (mmjax.plugins): registrations
  # True once configure.resolve has checked it against the registries and completed it.
  resolved: bool = dataclasses.field(default=False, compare=False, repr=False)


# ------------------------------------------------------------------------------ parsing

def _fields(cls, node, path: str, skip=()) -> Dict[str, Any]:
  """The dataclass fields present in `node` (a ConfigDict section); unknown keys fail."""
  names = {f.name for f in dataclasses.fields(cls)} - set(skip) - {"source", "resolved"}
  keys = list(node.keys()) if node is not None else []
  unknown = [k for k in keys if k not in names and k not in skip]
  if unknown:
    raise ConfigError(f"unknown config key {path}.{unknown[0]}; known keys of {path}: "
                      f"{', '.join(sorted(names))}")
  return {k: _plain(node[k]) for k in keys if k in names}


def _plain(v):
  if isinstance(v, list):
    return tuple(_plain(x) for x in v)
  if isinstance(v, tuple):
    return tuple(_plain(x) for x in v)
  if hasattr(v, "to_dict"):
    return v.to_dict()
  return v


def _default(cls, field: str):
  """A dataclass field's default: the one place each default is stated."""
  return cls.__dataclass_fields__[field].default


@dataclasses.dataclass(frozen=True)
class _AttentionKeys:
  """The keys of the attention section (their defaults are BlockConfig's)."""
  impl: str = _default(BlockConfig, "attention_impl")
  chunk_size: int = _default(BlockConfig, "chunk_size")
  capture_weights: bool = _default(BlockConfig, "capture_weights")


def _block(mc, att) -> BlockConfig:
  if mc.width % mc.heads:
    raise ConfigError(f"model.width={mc.width} is not divisible by model.heads={mc.heads}; "
                      "pick a width that is a multiple of heads")
  a = _AttentionKeys(**_fields(_AttentionKeys, att, "attention"))
  get = lambda key, field: mc.get(key, _default(BlockConfig, field))
  try:
    return BlockConfig(
        width=int(mc.width), num_heads=int(mc.heads), mlp_dim=int(mc.mlp_dim),
        attention_impl=a.impl, chunk_size=int(a.chunk_size),
        capture_weights=bool(a.capture_weights),
        dtype=get("dtype", "dtype"), param_dtype=get("param_dtype", "param_dtype"),
        remat=get("remat", "remat"), scan=bool(get("scan", "scan")),
        dropout=float(get("dropout", "dropout")), activation=get("activation", "activation"),
        patch_dropout=float(get("patch_dropout", "patch_dropout")),
        norm_eps=float(get("norm_eps", "norm_eps")), key_bias=bool(get("key_bias", "key_bias")))
  except ValueError as e:
    raise ConfigError(str(e)) from None


# model.* keys that go to FusionConfig as they are (the depths come from model.depth).
FUSION_KEYS = tuple(f.name for f in dataclasses.fields(FusionConfig)
                    if f.name not in ("name", "unimodal_depth", "joint_depth", "post_depth",
                                      "cross_depth"))
_MODEL_KEYS = ("fusion", "width", "heads", "mlp_dim", "embed_dim", "dtype", "param_dtype",
               "remat", "scan", "dropout", "patch_dropout", "depth", "modalities", "activation",
               "norm_eps", "key_bias", "objective_heads", "decoder_depth", "caption_from",
               "order_segments", "loc_bins", "prototypes") + FUSION_KEYS


def _modality(name: str, o, base: BlockConfig) -> ModalityConfig:
  """One modality section: data keys, tower keys, head keys; the rest are embedder options
  (checked against the embedder by configure.resolve)."""
  o = _plain(o)
  kind = o.get("kind")
  if not isinstance(kind, str) or not kind:
    raise ConfigError(f"modality {name!r} needs a kind (model.modalities.{name}.kind), such "
                      "as 'image' or 'text'")
  options = {k: v for k, v in o.items() if k not in DATA_KEYS + TOWER_KEYS + HEAD_KEYS}
  tower = None
  if any(k in o for k in TOWER_KEYS):
    width = int(o.get("width", base.width))
    heads = int(o.get("heads", base.num_heads))
    if width % heads:
      raise ConfigError(f"model.modalities.{name}.width={width} is not divisible by its "
                        f"heads={heads}; pick a width that is a multiple of heads")
    mlp = int(o.get("mlp_dim", base.mlp_dim * width // base.width))
    extra = {k: o[k] for k in ("causal", "activation", "norm_eps", "key_bias") if k in o}
    try:
      tower = dataclasses.replace(base, width=width, num_heads=heads, mlp_dim=mlp, **extra)
    except ValueError as e:
      raise ConfigError(f"model.modalities.{name}: {e}") from None
  data = {k: o[k] for k in ("input_shape", "channels", "feature_dim", "in_dim", "region_classes")
          if k in o}
  if "input_shape" in data:
    data["input_shape"] = tuple(int(s) for s in data["input_shape"])
  head = {k: o[k] for k in HEAD_KEYS if k in o}
  if head.get("pool", "") not in ("",) + MODALITY_POOLS:
    raise ConfigError(f"unknown model.modalities.{name}.pool={head['pool']!r}; choose one of "
                      f"{', '.join(MODALITY_POOLS)}")
  return ModalityConfig(name=name, kind=kind, options=tuple(options.items()), tower=tower,
                        **data, **head)


def _model(mc, att) -> ModelConfig:
  unknown = [k for k in mc.keys() if k not in _MODEL_KEYS]
  if unknown:
    raise ConfigError(f"unknown config key model.{unknown[0]}; known keys of model: "
                      f"{', '.join(sorted(_MODEL_KEYS))}")
  block = _block(mc, att)
  mods = tuple(_modality(m, mc.modalities[m], block) for m in mc.modalities.keys())
  d = mc.get("depth", {})
  bad = [k for k in d.keys() if k not in DEPTH_KEYS]
  if bad:
    raise ConfigError(f"unknown config key model.depth.{bad[0]}; use {', '.join(DEPTH_KEYS)}")
  uni = d.get("unimodal", 0)
  per = {m.name: int(uni[m.name] if hasattr(uni, "keys") else uni) for m in mods}
  opts = {k: _plain(mc[k]) for k in FUSION_KEYS if k in mc}
  fcfg = FusionConfig(
      name=mc.get("fusion", _default(FusionConfig, "name")),
      unimodal_depth=tuple(sorted(per.items())),
      joint_depth=int(d.get("joint", _default(FusionConfig, "joint_depth"))),
      post_depth=int(d.get("post", _default(FusionConfig, "post_depth"))),
      cross_depth=int(d.get("cross", _default(FusionConfig, "cross_depth"))), **opts)
  heads = mc.get("objective_heads", "all")
  heads = ("all",) if heads == "all" else tuple(_plain(heads))
  embed_dim = int(mc.get("embed_dim", _default(ModelConfig, "embed_dim")))
  for m in mods:
    width = (m.tower or block).width
    if not m.proj and width != embed_dim:
      raise ConfigError(f"model.modalities.{m.name}.proj=False needs the tower width {width} "
                        f"to equal model.embed_dim={embed_dim}; set one to the other")
  names = [m.name for m in mods]
  caption_from = str(mc.get("caption_from", _default(ModelConfig, "caption_from")))
  if caption_from and caption_from not in names:
    raise ConfigError(f"model.caption_from={caption_from!r} is not a modality; use one of "
                      f"{', '.join(names)}")
  rest = {k: int(mc.get(k, _default(ModelConfig, k)))
          for k in ("decoder_depth", "order_segments", "loc_bins", "prototypes")}
  for k, v in rest.items():
    if v < (2 if k in ("loc_bins", "prototypes") else 1):
      raise ConfigError(f"model.{k}={v} must be >= {2 if k in ('loc_bins', 'prototypes') else 1}")
  return ModelConfig(fusion=fcfg, block=block, modalities=mods, embed_dim=embed_dim,
                     objective_heads=heads, caption_from=caption_from, **rest)


def _objectives(config) -> ObjectivesConfig:
  """The objectives section and the positive loss weights (configure.resolve checks them
  against the model: design capabilities, heads, each objective's own rules)."""
  weights = {k: float(v) for k, v in config.loss_weights.items()}
  o = _fields(ObjectivesConfig, config.get("objectives"), "objectives",
              skip=("weights", "starts"))
  starts = _starts(config.get("objectives", {}).get("starts", None), weights)
  out = ObjectivesConfig(weights=tuple((k, w) for k, w in weights.items() if w > 0),
                         starts=starts, **o)
  if not 0.0 <= out.cappa_fraction <= 1.0:
    raise ConfigError(f"objectives.cappa_fraction={out.cappa_fraction} must be in [0, 1]")
  for k in ("frame_order_ratio", "mrm_ratio"):
    v = getattr(out, k)
    if not (math.isfinite(v) and 0.0 < v <= 1.0):
      raise ConfigError(f"objectives.{k}={v} must be in (0, 1]")
  _check_distillation(out)
  for k in ("mlm_prob", "mim_ratio", "tips_mask_ratio"):
    v = getattr(out, k)
    if not (math.isfinite(v) and 0.0 < v < 1.0):
      raise ConfigError(f"objectives.{k}={v} must be in (0, 1)")
  mp = out.multi_positive
  if mp not in ("none", "text", "label"):
    raise ConfigError(f"unknown objectives.multi_positive={mp!r}; use 'none', 'text' (identical "
                      "captions are positives) or 'label' (equal labels are positives)")
  if mp != "none" and out.weight("sigmoid") > 0:
    raise ConfigError(f"objectives.multi_positive={mp!r} applies to the contrastive loss only; "
                      "set loss_weights.sigmoid=0 or objectives.multi_positive='none'")
  t = out.temperature
  if not (math.isfinite(t) and (t == 0 or t >= 0.01)):
    raise ConfigError(f"objectives.temperature={t} must be 0 (learned) or >= 0.01 (the logit "
                      "scale is capped at 100)")
  return out


def _check_distillation(o: ObjectivesConfig) -> None:
  """SILC / TIPS settings: positive temperatures, >= 1 crop, a crop area range in (0, 1]."""
  for k in ("distill_student_temp", "distill_teacher_temp"):
    v = getattr(o, k)
    if not (math.isfinite(v) and v > 0):
      raise ConfigError(f"objectives.{k}={v} must be > 0")
  if o.silc_crops < 1:
    raise ConfigError(f"objectives.silc_crops={o.silc_crops} must be >= 1")
  scale = tuple(o.silc_crop_scale)
  if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
    raise ConfigError(f"objectives.silc_crop_scale={o.silc_crop_scale} must be (min, max) "
                      "areas with 0 < min <= max <= 1, e.g. (0.05, 0.4)")


def _starts(node, weights) -> Tuple[Tuple[str, int], ...]:
  """objectives.starts ({objective: step}) as ((name, step), ...), steps > 0 only."""
  out = []
  for k, v in (dict(node) if node else {}).items():
    if k not in weights:
      raise ConfigError(f"objectives.starts.{k} names no loss weight; starts are for objectives "
                        f"in loss_weights ({', '.join(weights)})")
    if int(v) < 0 or int(v) != v:
      raise ConfigError(f"objectives.starts.{k}={v} must be a step >= 0")
    if int(v) > 0:
      out.append((k, int(v)))
  return tuple(out)


def freeze_entries(freeze) -> Tuple[str, ...]:
  """config.freeze as a tuple of entries: a name, 'image,text', or a list of them."""
  entries = (freeze or "").split(",") if isinstance(freeze, str) or not freeze else freeze
  if not isinstance(entries, (tuple, list)) or not all(isinstance(e, str) for e in entries):
    raise ConfigError(f"freeze={freeze!r} must be a modality name, a comma-separated list of "
                      "them, or parameter path prefixes such as 'fusion/tower_image'")
  return tuple(e.strip() for e in entries if e.strip())


def _init_and_freeze(top) -> Dict[str, Any]:
  """init_from as a path ('' = none); freeze as a tuple of entries."""
  init_from = top.get("init_from") or ""
  if not isinstance(init_from, str):
    raise ConfigError(f"init_from={init_from!r} must be a path (a workdir or "
                      "<workdir>/checkpoints/<step>) or '' for none")
  return {"init_from": init_from, "freeze": freeze_entries(top.get("freeze"))}


def _eval(config) -> EvalConfig:
  """The eval section; the legacy top-level eval_every_steps counts when eval.every_steps is
  0 (configs/default.py states eval.every_steps = 0)."""
  e = _fields(EvalConfig, config.get("eval"), "eval")
  if not e.get("every_steps"):
    e["every_steps"] = int(config.get("eval_every_steps") or 0)
  return EvalConfig(**e)


def _data(config):
  """The data section, resolved by the data layer's own key table (mmjax/data/config.py)."""
  from mmjax.data import config as data_config  # pylint: disable=import-outside-toplevel  (a leaf)
  try:
    return data_config.resolve(config.get("data"))
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(str(e)) from None


def parse_model(config) -> ModelConfig:
  """The typed ModelConfig of a full config's model and attention sections (not resolved:
  configure.resolve_model checks it against the registries and completes it)."""
  if isinstance(config, Config):
    return config.model
  if isinstance(config, ModelConfig):
    return config
  if "model" not in config:
    raise ConfigError("config lacks ['model']; start from configs/default.py")
  return _model(config.model, config.get("attention"))


def parse(config) -> Config:
  """The typed Config of a ConfigDict: every section's keys and values checked, one line per
  problem (ConfigError). Not yet checked across layers: see configure.resolve."""
  if isinstance(config, Config):
    return config
  required = ("model", "loss_weights")
  missing = [k for k in required if k not in config]
  if missing:
    raise ConfigError(f"config lacks {missing}; start from configs/default.py")
  sections = ("model", "attention", "loss_weights", "objectives", "optimizer", "mesh",
              "checkpoint", "data", "eval")
  top = _fields(Config, config, "config", skip=sections + IGNORED_KEYS + INFO_KEYS)
  top.update(_init_and_freeze(top))
  from mmjax import plugins  # pylint: disable=import-outside-toplevel  (stdlib only)
  try:
    top["imports"] = plugins.entries(config)
  except plugins.PluginError as e:
    raise ConfigError(str(e)) from None
  cfg = Config(
      model=parse_model(config), objectives=_objectives(config),
      optimizer=OptimizerConfig(**_fields(OptimizerConfig, config.get("optimizer"),
                                           "optimizer")),
      mesh=MeshConfig(**_fields(MeshConfig, config.get("mesh"), "mesh")),
      checkpoint=CheckpointConfig(**_fields(CheckpointConfig, config.get("checkpoint"),
                                            "checkpoint")),
      eval=_eval(config), data=_data(config), source=config, **top)
  if cfg.batch_size <= 0 or cfg.total_steps <= 0:
    raise ConfigError("batch_size and total_steps must be positive")
  if cfg.batch_size % cfg.grad_accum_steps:
    raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by "
                      f"grad_accum_steps={cfg.grad_accum_steps}")
  if not 0 <= cfg.unmasked_steps <= cfg.total_steps:
    raise ConfigError(f"unmasked_steps={cfg.unmasked_steps} must be in [0, total_steps="
                      f"{cfg.total_steps}]")
  if cfg.grad_accum_negatives not in ("batch", "micro"):
    raise ConfigError(f"unknown grad_accum_negatives {cfg.grad_accum_negatives!r}; use 'batch' "
                      "(the whole batch's negatives, exact) or 'micro' (each micro-batch's own)")
  if cfg.nan_policy not in ("stop", "skip"):
    raise ConfigError(f"unknown nan_policy {cfg.nan_policy!r}; use 'stop' or 'skip'")
  return cfg


def image_pack_rows(cfg: Config) -> int:
  """Packed image rows per step: objectives.image_pack_rows, 0 meaning batch_size."""
  return cfg.objectives.image_pack_rows or cfg.batch_size


def pack_rows(cfg: Config) -> int:
  """Packed text rows per step: objectives.pack_rows, 0 meaning batch_size."""
  return cfg.objectives.pack_rows or cfg.batch_size


# ------------------------------------------------------------------------------ loading

def _defaults(cls, skip=()) -> Dict[str, Any]:
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.default is not dataclasses.MISSING and f.name not in skip}


def base_config() -> ml_collections.ConfigDict:
  """Every key a config can set, at its dataclass default: a config file starts here and sets
  only what differs, and `--config.KEY=VALUE` can override any key. A config states what has
  no default: model.width / heads / mlp_dim, model.modalities and loss_weights."""
  from mmjax.data import config as data_config  # pylint: disable=import-outside-toplevel  (a leaf)
  c = ml_collections.ConfigDict(_defaults(Config, ("freeze", "resolved")))
  c.freeze = ""  # a modality, 'image,text', or parameter path prefixes (see freeze_entries)
  block = _defaults(BlockConfig, ("attention_impl", "chunk_size", "capture_weights", "causal"))
  fusion = _defaults(FusionConfig, ("unimodal_depth", "joint_depth", "post_depth",
                                    "cross_depth"))
  model = _defaults(ModelConfig, ("objective_heads",))
  c.model = ml_collections.ConfigDict({"fusion": fusion.pop("name"), **fusion, **block, **model})
  c.model.depth = ml_collections.ConfigDict(
      {"unimodal": 0, "joint": _default(FusionConfig, "joint_depth"),
       "post": _default(FusionConfig, "post_depth"),
       "cross": _default(FusionConfig, "cross_depth")})
  c.attention = ml_collections.ConfigDict(_defaults(_AttentionKeys))
  c.objectives = ml_collections.ConfigDict(_defaults(ObjectivesConfig, ("weights", "starts")))
  c.objectives.starts = ml_collections.ConfigDict()  # {objective: step}
  for name, cls in (("optimizer", OptimizerConfig), ("mesh", MeshConfig),
                    ("checkpoint", CheckpointConfig), ("eval", EvalConfig)):
    c[name] = ml_collections.ConfigDict(_defaults(cls))
  c.data = data_config.get_config()
  return c


def load_config(path: str = "default", overrides: Optional[Mapping[str, Any]] = None
                ) -> ml_collections.ConfigDict:
  """A config file's get_config(), by path ('configs/fusion/early_concat.py') or by name
  ('default', 'fusion/early_concat': a config shipped in mmjax/configs), with dotted
  overrides applied ({'model.width': 64}) as --config.KEY=VALUE would."""
  here = os.path.join(os.path.dirname(__file__), "configs")
  file = path if path.endswith(".py") else os.path.join(here, f"{path}.py")
  if not os.path.isfile(file):
    raise ConfigError(f"config file {path} not found; pass a path to a .py config or a name "
                      f"under mmjax/configs such as 'default' or 'fusion/early_concat'")
  spec = importlib.util.spec_from_file_location("mmjax_user_config", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in (overrides or {}).items():
    node = config
    *path_, last = key.split(".")
    for p in path_:
      node = node[p]
    if last not in node:
      raise ConfigError(f"unknown config key {key}; check it against the config file")
    node[last] = value
  return config
