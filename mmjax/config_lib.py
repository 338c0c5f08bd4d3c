"""One typed config: frozen dataclasses parsed once from the ConfigDict at the entry points.

Config files stay plain Python returning an `ml_collections.ConfigDict` (configs/), and
train.py / eval.py keep the `--config.KEY=VALUE` syntax. `parse(config_dict)` turns it into a
`Config` once: every default not set in the file is the dataclass field's default below, and
every check runs here, before anything compiles, as one line naming the problem and the fix
(`ConfigError`). The rest of the code takes the typed objects:

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

import jax.numpy as jnp
import ml_collections

from mmjax import fusion as fusion_lib
from mmjax import objectives as objectives_lib
from mmjax.attention import IMPLS
from mmjax.layers import REMAT_POLICIES, BlockConfig
from mmjax.tokenizers import EMBEDDERS, PATCH_KINDS, token_count  # noqa: F401 (PATCH_KINDS re-exported)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Modality-config keys that describe the data (not embedder options), and that size a tower.
DATA_KEYS = ("kind", "input_shape", "channels", "feature_dim", "in_dim", "region_classes")
TOWER_KEYS = ("width", "heads", "mlp_dim", "causal", "activation", "norm_eps", "key_bias")
# Modality keys of the model around the tower: its pooling, its contrastive projection.
HEAD_KEYS = ("pool", "proj", "proj_bias")
MODALITY_POOLS = ("cls", "mean", "last", "map")
DEPTH_KEYS = ("unimodal", "joint", "post", "cross")
# Keys older configs carry, not fields of Config (eval_every_steps: read as eval.every_steps).
IGNORED_KEYS = ("eval_every_steps",)
# Keys that record where a config came from (mmjax.convert), for people, not for the code.
INFO_KEYS = ("converted_from",)


class ConfigError(ValueError):
  """A bad config value or combination (the message is one line)."""


# ------------------------------------------------------------------------------ sections

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

  def option(self, key: str):
    """An embedder option: the config's value, else the embedder's own default."""
    opts = dict(self.options)
    if key in opts:
      return opts[key]
    return EMBEDDERS[self.kind].__dataclass_fields__[key].default

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
  fusion: fusion_lib.FusionConfig
  block: BlockConfig
  modalities: Tuple[ModalityConfig, ...]
  embed_dim: int = 128
  # The objectives whose heads are built (an imported CLIP: contrastive only); 'all' is every
  # objective declaring default_head, the others are added when their loss weight is > 0.
  objective_heads: Tuple[str, ...] = ("contrastive", "sigmoid", "itm", "mlm", "mim")
  decoder_depth: int = 2      # captioning decoder layers (mmjax.decoder), with 'caption'
  caption_from: str = ""      # the modality the decoder reads ('' = the first non-text one)
  order_segments: int = 3     # sentence ordering: text bodies cut into this many segments

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

  @property
  def design(self) -> fusion_lib.FusionDesign:
    return self.fusion.design


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
  # Captioning (loss_weights.caption): the fraction of examples trained with CapPa's parallel
  # prediction (every decoder input a [MASK]) instead of teacher forcing.
  cappa_fraction: float = 0.0
  # Prefix-LM (loss_weights.prefix_lm): True draws the text prefix length per example
  # (SimVLM); False keeps only [CLS] in the prefix (the other modality is the prefix).
  prefix_random: bool = True
  frame_order_ratio: float = 0.5  # frame ordering: fraction of tubelet groups shuffled
  mrm_ratio: float = 0.15         # masked region modelling: fraction of regions masked

  def weight(self, name: str) -> float:
    return dict(self.weights).get(name, 0.0)

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

  def __post_init__(self):
    if self.caption_beam < 1 or self.caption_max_len < 0:
      raise ConfigError(f"eval.caption_beam={self.caption_beam} must be >= 1 and "
                        f"eval.caption_max_len={self.caption_max_len} >= 0 (0 = data.text_len)")
    if self.probe_train_examples < 2:
      raise ConfigError(f"eval.probe_train_examples={self.probe_train_examples} must be >= 2")
    if not self.probe_l2 or min(self.probe_l2) <= 0:
      raise ConfigError(f"eval.probe_l2={self.probe_l2} must be a non-empty list of positive "
                        "numbers")
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
  nan_policy: str = "stop"  # stop | skip
  log_every_steps: int = 25
  init_from: str = ""  # a workdir or <workdir>/checkpoints/<step>: its parameters, when fresh
  freeze: Tuple[str, ...] = ()  # modality names or parameter path prefixes left untrained
  imports: Tuple[str, ...] = ()  # user modules imported first (mmjax.plugins): registrations


# ------------------------------------------------------------------------------ parsing

def _fields(cls, node, path: str, skip=()) -> Dict[str, Any]:
  """The dataclass fields present in `node` (a ConfigDict section); unknown keys fail."""
  names = {f.name for f in dataclasses.fields(cls)} - set(skip)
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


def _dtype(name: str, key: str):
  if name not in DTYPES:
    raise ConfigError(f"unknown dtype {name!r} for {key}; choose one of {', '.join(DTYPES)}")
  return DTYPES[name]


def _block(mc, att) -> BlockConfig:
  if mc.width % mc.heads:
    raise ConfigError(f"model.width={mc.width} is not divisible by model.heads={mc.heads}; "
                      "pick a width that is a multiple of heads")
  a = _fields(_AttentionKeys, att, "attention")
  if a.get("impl", _default(BlockConfig, "attention_impl")) not in IMPLS:
    raise ConfigError(f"unknown attention.impl={a['impl']!r}; choose one of {', '.join(IMPLS)}")
  remat = mc.get("remat", _default(BlockConfig, "remat"))
  if remat not in REMAT_POLICIES:
    raise ConfigError(f"unknown model.remat={remat!r}; choose one of "
                      f"{', '.join(REMAT_POLICIES)}")
  get = lambda key, field: mc.get(key, _default(BlockConfig, field))
  try:
    return BlockConfig(
        width=int(mc.width), num_heads=int(mc.heads), mlp_dim=int(mc.mlp_dim),
        attention_impl=a.get("impl", _default(BlockConfig, "attention_impl")),
        chunk_size=int(a.get("chunk_size", _default(BlockConfig, "chunk_size"))),
        capture_weights=bool(a.get("capture_weights", _default(BlockConfig, "capture_weights"))),
        dtype=_dtype(mc.get("dtype", "float32"), "model.dtype"),
        param_dtype=_dtype(mc.get("param_dtype", "float32"), "model.param_dtype"),
        remat=remat, scan=bool(get("scan", "scan")), dropout=float(get("dropout", "dropout")),
        activation=get("activation", "activation"), norm_eps=float(get("norm_eps", "norm_eps")),
        key_bias=bool(get("key_bias", "key_bias")))
  except ValueError as e:
    raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class _AttentionKeys:
  """The keys of the attention section (their defaults are BlockConfig's)."""
  impl: str = BlockConfig.attention_impl
  chunk_size: int = BlockConfig.chunk_size
  capture_weights: bool = BlockConfig.capture_weights


def _default(cls, field: str):
  """A dataclass field's default: the one place each default is stated."""
  return cls.__dataclass_fields__[field].default


# model.* keys that go to FusionConfig as they are (the depths come from model.depth).
FUSION_KEYS = tuple(f.name for f in dataclasses.fields(fusion_lib.FusionConfig)
                    if f.name not in ("name", "unimodal_depth", "joint_depth", "post_depth",
                                      "cross_depth"))
_MODEL_KEYS = ("fusion", "width", "heads", "mlp_dim", "embed_dim", "dtype", "param_dtype",
               "remat", "scan", "dropout", "depth", "modalities", "activation", "norm_eps",
               "key_bias", "objective_heads", "decoder_depth", "caption_from",
               "order_segments") + FUSION_KEYS


def _modality(name: str, o, base: BlockConfig) -> ModalityConfig:
  o = _plain(o)
  kind = o.get("kind")
  if kind not in EMBEDDERS:
    raise ConfigError(f"modality {name!r} has unknown kind {kind!r}; choose one of "
                      f"{', '.join(EMBEDDERS)}")
  fields = set(EMBEDDERS[kind].__dataclass_fields__) - {"parent", "name", "width", "dtype",
                                                        "param_dtype"}
  options = {k: v for k, v in o.items() if k not in DATA_KEYS + TOWER_KEYS + HEAD_KEYS}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ConfigError(f"modality {name!r} ({kind}) has unknown option(s) {unknown}; valid: "
                      f"{sorted(fields)}")
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
  try:
    fcfg = fusion_lib.FusionConfig(
        name=mc.fusion, unimodal_depth=tuple(sorted(per.items())),
        joint_depth=int(d.get("joint", 0)), post_depth=int(d.get("post", 0)),
        cross_depth=int(d.get("cross", 0)), **opts)
    design = fcfg.design
    design.validate(tuple(m.name for m in mods))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  widths = {block.width} | {m.tower.width for m in mods if m.tower is not None}
  if not design.projects_towers and len(widths) > 1 and fcfg.pool_combine != "concat":
    raise ConfigError(f"towers of different widths {sorted(widths)} cannot be combined by "
                      f"pool_combine={fcfg.pool_combine!r}; use pool_combine='concat'")
  heads = mc.get("objective_heads", "all")
  heads = objectives_lib.default_heads() if heads == "all" else tuple(_plain(heads))
  bad = [h for h in heads if h not in objectives_lib.names()]
  if bad:
    raise ConfigError(f"unknown model.objective_heads {bad}; choose from "
                      f"{', '.join(objectives_lib.names())} or 'all'")
  embed_dim = int(mc.get("embed_dim", _default(ModelConfig, "embed_dim")))
  for m in mods:
    width = (m.tower or block).width
    if not m.proj and width != embed_dim:
      raise ConfigError(f"model.modalities.{m.name}.proj=False needs the tower width {width} "
                        f"to equal model.embed_dim={embed_dim}; set one to the other")
  names = [m.name for m in mods]
  caption_from = str(mc.get("caption_from", ""))
  if caption_from and caption_from not in names:
    raise ConfigError(f"model.caption_from={caption_from!r} is not a modality; use one of "
                      f"{', '.join(names)}")
  for k in ("decoder_depth", "order_segments"):
    if int(mc.get(k, 1)) < 1:
      raise ConfigError(f"model.{k}={mc.get(k)} must be >= 1")
  return ModelConfig(fusion=fcfg, block=block, modalities=mods, embed_dim=embed_dim,
                     objective_heads=heads,
                     decoder_depth=int(mc.get("decoder_depth",
                                              _default(ModelConfig, "decoder_depth"))),
                     caption_from=caption_from,
                     order_segments=int(mc.get("order_segments",
                                               _default(ModelConfig, "order_segments"))))


def _objectives(config, model: ModelConfig) -> ObjectivesConfig:
  """The objectives section and loss weights, checked against the model by every active
  objective (mmjax.objectives.check: design capabilities, heads, each one's own rules)."""
  weights = {k: float(v) for k, v in config.loss_weights.items()}
  o = _fields(ObjectivesConfig, config.get("objectives"), "objectives", skip=("weights",))
  try:
    objectives_lib.check_weights(model.design, weights)
    out = ObjectivesConfig(weights=tuple((k, w) for k, w in weights.items() if w > 0), **o)
    objectives_lib.check(model, out)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if not 0.0 <= out.cappa_fraction <= 1.0:
    raise ConfigError(f"objectives.cappa_fraction={out.cappa_fraction} must be in [0, 1]")
  for k in ("frame_order_ratio", "mrm_ratio"):
    v = getattr(out, k)
    if not (math.isfinite(v) and 0.0 < v <= 1.0):
      raise ConfigError(f"objectives.{k}={v} must be in (0, 1]")
  return out


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


def parse(config) -> Config:
  """The typed Config of a ConfigDict, every check applied (one-line ConfigError)."""
  if isinstance(config, Config):
    return config
  from mmjax import plugins  # pylint: disable=import-outside-toplevel  (stdlib only)
  try:
    plugins.load(config)
  except plugins.PluginError as e:
    raise ConfigError(str(e)) from None
  required = ("model", "loss_weights")
  missing = [k for k in required if k not in config]
  if missing:
    raise ConfigError(f"config lacks {missing}; start from configs/default.py")
  sections = ("model", "attention", "loss_weights", "objectives", "optimizer", "mesh",
              "checkpoint", "data", "eval")
  top = _fields(Config, config, "config", skip=sections + IGNORED_KEYS + INFO_KEYS)
  top.update(_init_and_freeze(top))
  model = parse_model(config)
  from mmjax.data import config as data_config  # pylint: disable=import-outside-toplevel
  try:
    data = data_config.resolve(config.get("data"))
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(str(e)) from None
  cfg = Config(
      model=model, objectives=_objectives(config, model),
      optimizer=OptimizerConfig(**_fields(OptimizerConfig, config.get("optimizer"),
                                           "optimizer")),
      mesh=MeshConfig(**_fields(MeshConfig, config.get("mesh"), "mesh")),
      checkpoint=CheckpointConfig(**_fields(CheckpointConfig, config.get("checkpoint"),
                                            "checkpoint")),
      eval=_eval(config),
      data=data, source=config, **top)
  if cfg.batch_size <= 0 or cfg.total_steps <= 0:
    raise ConfigError("batch_size and total_steps must be positive")
  if cfg.batch_size % cfg.grad_accum_steps:
    raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by "
                      f"grad_accum_steps={cfg.grad_accum_steps}")
  if cfg.nan_policy not in ("stop", "skip"):
    raise ConfigError(f"unknown nan_policy {cfg.nan_policy!r}; use 'stop' or 'skip'")
  mp = cfg.objectives.multi_positive
  if mp not in ("none", "text", "label"):
    raise ConfigError(f"unknown objectives.multi_positive={mp!r}; use 'none', 'text' (identical "
                      "captions are positives) or 'label' (equal labels are positives)")
  if mp != "none" and cfg.objectives.weight("sigmoid") > 0:
    raise ConfigError(f"objectives.multi_positive={mp!r} applies to the contrastive loss only; "
                      "set loss_weights.sigmoid=0 or objectives.multi_positive='none'")
  t = cfg.objectives.temperature
  if not (math.isfinite(t) and (t == 0 or t >= 0.01)):
    raise ConfigError(f"objectives.temperature={t} must be 0 (learned) or >= 0.01 (the logit "
                      "scale is capped at 100)")
  for k in ("mlm_prob", "mim_ratio"):
    v = getattr(cfg.objectives, k)
    if not (math.isfinite(v) and 0.0 < v < 1.0):
      raise ConfigError(f"objectives.{k}={v} must be in (0, 1)")
  check_packing(cfg)
  return cfg


def pack_rows(cfg: Config) -> int:
  """Packed text rows per step: objectives.pack_rows, 0 meaning batch_size."""
  return cfg.objectives.pack_rows or cfg.batch_size


def check_packing(cfg: Config) -> None:
  """objectives.pack_text: one-line errors where packing would not be exact."""
  o, model = cfg.objectives, cfg.model
  if not o.pack_text:
    return
  design = model.design
  if not design.independent_streams:
    raise ConfigError(f"objectives.pack_text needs a fusion whose text tower is encoded on its "
                      f"own (dual_encoder); {model.fusion.name} mixes text with other tokens, "
                      "so the other modality would have to be packed too; set pack_text=False")
  if o.weight("mlm") <= 0:
    raise ConfigError("objectives.pack_text packs the MLM pass; set loss_weights.mlm > 0 or "
                      "objectives.pack_text=False")
  if cfg.grad_accum_steps != 1:
    raise ConfigError(f"objectives.pack_text packs whole steps; it needs grad_accum_steps=1, "
                      f"got {cfg.grad_accum_steps}")
  if not 0 <= o.pack_rows <= cfg.batch_size:
    raise ConfigError(f"objectives.pack_rows={o.pack_rows} must be in [0, batch_size="
                      f"{cfg.batch_size}] (0 = batch_size)")
  for m in model.modalities:
    if m.kind != "text":
      continue
    if m.option("key_mask") not in ("pad", "eos"):
      raise ConfigError(f"objectives.pack_text needs model.modalities.{m.name}.key_mask 'pad' "
                        f"or 'eos', got {m.option('key_mask')!r} (its padding is attended to)")
    if m.option("add_cls"):
      raise ConfigError(f"objectives.pack_text needs model.modalities.{m.name}.add_cls=False "
                        "(the tokenizer's [CLS] starts each example)")


def parse_model(config) -> ModelConfig:
  """The typed ModelConfig of a full config (its model and attention sections), checked."""
  if isinstance(config, Config):
    return config.model
  if isinstance(config, ModelConfig):
    return config
  model = _model(config.model, config.get("attention"))
  weights = config.get("loss_weights") or {}
  extra = objectives_lib.extra_heads(weights, model.objective_heads)
  if extra:  # the heads of the objectives that train (Objective.default_head False)
    model = dataclasses.replace(model, objective_heads=model.objective_heads + extra)
  if "data" in config:  # data and model meet: the text ids come from the tokenizer
    mlm = float(weights.get("mlm", 0.0)) > 0
    model = text_ids(model, config.data, mlm)
  if type(model.design).validate_lengths is not fusion_lib.FusionDesign.validate_lengths:
    try:
      model.design.validate_lengths(token_counts(model))
    except ValueError as e:
      raise ConfigError(str(e)) from None
  return model


def text_ids(model: ModelConfig, data, mlm: bool) -> ModelConfig:
  """Each text modality's ids from the data's tokenizer (mmjax.data.text.from_config):
  pad_id, mask_id, special_ids, vocab_size (and key_mask='eos' / eos_id where padding reuses a
  real token), written where they differ from the embedder's defaults and the config does not
  set them; a set value that contradicts the tokenizer, or a vocab smaller than the ids the
  run produces (the mask id only with MLM), is a ConfigError. Without a data section
  parse_model keeps the embedder's defaults, the bytes tokenizer's ids."""
  if not any(m.kind == "text" for m in model.modalities):
    return model
  from mmjax.data import text as text_lib  # pylint: disable=import-outside-toplevel
  try:
    spec = text_lib.spec_from_config(data)
    tok = text_lib.get_tokenizer(spec)
  except (ValueError, FileNotFoundError, ImportError) as e:
    raise ConfigError(str(e)) from None
  where = f"data.tokenizer={spec.spec}"
  if mlm and tok.mask_id is None:
    raise ConfigError(f"loss_weights.mlm > 0 needs a [MASK] token, and {where} has none "
                      "(data.tokenizer_specials.mask=''); name one or set loss_weights.mlm=0")
  fields = EMBEDDERS["text"].__dataclass_fields__
  want = {"pad_id": tok.pad_id, "mask_id": -1 if tok.mask_id is None else tok.mask_id}
  if tok.pad_is_token and "key_mask" in fields:
    want["key_mask"] = "eos"
  need = tok.ids_needed(mlm)
  mods = []
  for m in model.modalities:
    if m.kind != "text":
      mods.append(m)
      continue
    opts, key = dict(m.options), f"model.modalities.{m.name}"
    for k, v in want.items():
      if k not in opts:
        if m.option(k) != v:
          opts[k] = v
      elif k == "key_mask" and opts[k] == "pad":
        raise ConfigError(f"{key}.key_mask='pad' hides real tokens: {where} pads with id "
                          f"{tok.pad_id}, a real token; use key_mask='eos' or leave it unset")
      elif k != "key_mask" and opts[k] != v:
        raise ConfigError(f"{key}.{k}={opts[k]} contradicts the tokenizer's {k}={v} ({where}); "
                          f"set it to {v} or leave it unset")
    if "special_ids" in opts:
      lack = sorted(set(tok.role_ids) - {int(i) for i in opts["special_ids"]})
      if lack:
        raise ConfigError(f"{key}.special_ids={tuple(opts['special_ids'])} lacks the "
                          f"tokenizer's special id(s) {lack} ({where}); add them or leave "
                          "special_ids unset")
    elif tuple(m.option("special_ids")) != tok.special_ids:
      opts["special_ids"] = tok.special_ids
    if "eos_id" in fields and (opts.get("key_mask") or m.option("key_mask")) == "eos":
      if tok.sep_id is None:
        raise ConfigError(f"{key}.key_mask='eos' needs an end token, and {where} has none "
                          "(data.tokenizer_specials.sep=''); name one or use key_mask='pad'")
      if "eos_id" not in opts:
        opts["eos_id"] = tok.sep_id
      elif opts["eos_id"] != tok.sep_id:
        raise ConfigError(f"{key}.eos_id={opts['eos_id']} contradicts the tokenizer's end "
                          f"token {tok.sep_id} ({where}); set it to {tok.sep_id} or leave it "
                          "unset")
    if "vocab_size" not in opts:
      if m.option("vocab_size") != need:
        opts["vocab_size"] = need
    elif int(opts["vocab_size"]) < need:
      raise ConfigError(f"{key}.vocab_size={opts['vocab_size']} is smaller than the "
                        f"tokenizer's {need} ids ({where}); set {key}.vocab_size={need}")
    mods.append(dataclasses.replace(m, options=tuple(opts.items())))
  return dataclasses.replace(model, modalities=tuple(mods))


def check_mesh(cfg: Config, num_devices: int) -> Tuple[int, int, int]:
  """(data, fsdp, tensor) for `num_devices`; the batch must split over data x fsdp."""
  from mmjax import sharding  # pylint: disable=import-outside-toplevel
  try:
    d, f, t = sharding.mesh_shape(dataclasses.asdict(cfg.mesh), num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  micro = cfg.batch_size // cfg.grad_accum_steps
  if micro % (d * f):
    raise ConfigError(f"batch_size={cfg.batch_size} (per micro-batch {micro}) is not "
                      f"divisible by the {d * f} batch shards (mesh.data x mesh.fsdp); change "
                      "batch_size or the mesh")
  if cfg.objectives.pack_text and pack_rows(cfg) % (d * f):
    raise ConfigError(f"objectives.pack_rows={pack_rows(cfg)} is not divisible by the {d * f} "
                      "batch shards (mesh.data x mesh.fsdp); change pack_rows")
  return d, f, t


def validate(config, num_devices: int = 1) -> Config:
  """parse + check_mesh: everything train.py checks before it builds anything."""
  cfg = parse(config)
  check_mesh(cfg, num_devices)
  return cfg


def token_counts(model: ModelConfig) -> Dict[str, int]:
  """Tokens each modality's embedder produces for the configured input shapes."""
  return {m.name: token_count(m, model.block) for m in model.modalities}


# ------------------------------------------------------------------------------ loading

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
