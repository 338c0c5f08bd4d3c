"""The cross-layer step after parsing: a parsed config meets the registries.

`config_lib.parse` checks each section on its own and imports no model code. `resolve`
parses, then checks the parts against each other and against what is registered, and
completes the config (one-line `ConfigError` for each problem):

  imports        config.imports loaded first (mmjax.plugins), so user registrations count
  blocks         attention.impl a backend (mmjax.attention.IMPLS), model.remat a policy and
                 each activation a function of mmjax.layers
  modalities     each kind an embedder (mmjax.tokenizers.EMBEDDERS), its options fields of
                 that embedder, whose defaults are recorded (ModalityConfig.option)
  fusion         the design registered and valid for these modalities, the towers combinable
  objectives     the loss weights known; model.objective_heads 'all' expanded and the heads
                 of weighted objectives added; each active objective's requirements and rules
  text ids       each text modality's ids from the data's tokenizer (text_ids)
  token lengths  designs that bound lengths see each embedder's token count
  packing        objectives.pack_text only where packing is exact
`check_mesh(cfg, n)` / `validate(config, n)` add the device mesh.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Tuple

from mmjax import attention, fusion, layers, objectives, plugins, tokenizers
from mmjax.config_lib import (EMBEDDER_OWN, BlockConfig, Config, ConfigError, ModalityConfig,
                              ModelConfig, image_pack_rows, pack_rows, parse, parse_model)


def _imports(config) -> None:
  try:
    plugins.load(config)
  except plugins.PluginError as e:
    raise ConfigError(str(e)) from None


def _block(block: BlockConfig, where: str) -> None:
  if block.attention_impl not in attention.IMPLS:
    raise ConfigError(f"unknown attention.impl={block.attention_impl!r}; choose one of "
                      f"{', '.join(attention.IMPLS)}")
  if block.remat not in layers.REMAT_POLICIES:
    raise ConfigError(f"unknown model.remat={block.remat!r}; choose one of "
                      f"{', '.join(layers.REMAT_POLICIES)}")
  if block.activation not in layers.ACTIVATIONS:
    raise ConfigError(f"unknown activation {block.activation!r} for {where}; choose one of "
                      f"{', '.join(layers.ACTIVATIONS)}")


def _modality(m: ModalityConfig) -> ModalityConfig:
  """The modality with its embedder checked and the embedder's defaults recorded."""
  if m.kind not in tokenizers.EMBEDDERS:
    raise ConfigError(f"modality {m.name!r} has unknown kind {m.kind!r}; choose one of "
                      f"{', '.join(tokenizers.EMBEDDERS)}")
  fields = {k: f.default for k, f in tokenizers.EMBEDDERS[m.kind].__dataclass_fields__.items()
            if k not in EMBEDDER_OWN}
  unknown = sorted(set(dict(m.options)) - set(fields))
  if unknown:
    raise ConfigError(f"modality {m.name!r} ({m.kind}) has unknown option(s) {unknown}; valid: "
                      f"{sorted(fields)}")
  if m.tower is not None:
    _block(m.tower, f"model.modalities.{m.name}")
  return dataclasses.replace(m, defaults=tuple(fields.items()))


def _model(model: ModelConfig, weights: Mapping[str, float]) -> ModelConfig:
  """Blocks, embedders, the design and the heads of a parsed ModelConfig."""
  _block(model.block, "model.activation")
  mods = tuple(_modality(m) for m in model.modalities)
  try:
    design = fusion.design_of(model.fusion)
    design.validate(tuple(m.name for m in mods))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  widths = {model.block.width} | {m.tower.width for m in mods if m.tower is not None}
  if not design.projects_towers and len(widths) > 1 and model.fusion.pool_combine != "concat":
    raise ConfigError(f"towers of different widths {sorted(widths)} cannot be combined by "
                      f"pool_combine={model.fusion.pool_combine!r}; use pool_combine='concat'")
  heads = model.objective_heads
  heads = objectives.default_heads() if heads == ("all",) else heads
  bad = [h for h in heads if h not in objectives.names()]
  if bad:
    raise ConfigError(f"unknown model.objective_heads {bad}; choose from "
                      f"{', '.join(objectives.names())} or 'all'")
  # the heads of the objectives that train (Objective.default_head False)
  heads = heads + objectives.extra_heads(weights, heads)
  return dataclasses.replace(model, modalities=mods, objective_heads=heads)


def _resolved(model: ModelConfig) -> bool:
  return all(m.defaults for m in model.modalities) and model.objective_heads != ("all",)


def _resolve_model(model: ModelConfig, config) -> ModelConfig:
  weights = config.get("loss_weights") or {}
  model = _model(model, weights)
  if "data" in config:  # data and model meet: the text ids come from the tokenizer
    model = text_ids(model, config.data, float(weights.get("mlm", 0.0)) > 0)
  design = fusion.design_of(model.fusion)
  try:  # each embedder states its count (arithmetic); an undivided input shape fails here
    design.validate_lengths(token_counts(model))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  dropped = tokenizers.dropped_patches(model)
  for name, rate in dropped.items():
    if not 0.0 < rate < 1.0:
      raise ConfigError(f"model.modalities.{name}.patch_dropout={rate} must be in [0, 1)")
  for m in model.modalities:
    mode = m.option("patch_dropout_mode") if m.kind == "image" else "random"
    if mode not in tokenizers.DROPOUT_MODES:
      raise ConfigError(f"unknown model.modalities.{m.name}.patch_dropout_mode={mode!r}; use "
                        f"one of {', '.join(tokenizers.DROPOUT_MODES)}")
  if dropped and design.position_aligned:
    raise ConfigError(f"patch dropout on {sorted(dropped)} with fusion {design.name}: it adds the "
                      "modalities' tokens position by position, and dropped patches leave "
                      "nothing to align; set model.patch_dropout=0 or choose another fusion")
  return model


def resolve_model(config) -> ModelConfig:
  """The resolved ModelConfig of a full config (its model, attention, loss_weights and data
  sections), of a Config, or of a ModelConfig built by hand."""
  if isinstance(config, Config):
    return resolve(config).model
  if isinstance(config, ModelConfig):
    return config if _resolved(config) else _model(config, {})
  _imports(config)
  return _resolve_model(parse_model(config), config)


def resolve(config) -> Config:
  """The typed Config of a ConfigDict, parsed and checked across layers (one-line
  ConfigError); a resolved Config is returned as it is."""
  if isinstance(config, Config):
    if config.resolved:
      return config
    config = config.source
  _imports(config)
  cfg = parse(config)
  model = _resolve_model(cfg.model, config)
  try:
    objectives.check_weights(fusion.design_of(model.fusion), dict(config.loss_weights.items()))
    objectives.check(model, cfg.objectives)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  cfg = dataclasses.replace(cfg, model=model, resolved=True)
  check_packing(cfg)
  native_aspect(cfg)
  check_siglip2_objectives(cfg)
  if cfg.unmasked_steps and not tokenizers.dropped_patches(model):
    raise ConfigError(f"unmasked_steps={cfg.unmasked_steps} ends patch dropout, and no "
                      "modality drops patches; set model.patch_dropout (e.g. 0.5) or drop "
                      "unmasked_steps")
  if cfg.eval.use_ema and not cfg.optimizer.ema_decay:
    raise ConfigError("eval.use_ema=True needs EMA parameters, and optimizer.ema_decay=0 "
                      "keeps none; train with optimizer.ema_decay (e.g. 0.999) or drop "
                      "eval.use_ema")
  return cfg


REGION_SOURCES = ("builtin", "jsonl", "wds", "array_record")  # sources that carry regions


def check_siglip2_objectives(cfg: Config) -> None:
  """LocCa needs region boxes in the data; SILC / TIPS an EMA teacher and square images;
  objectives.starts steps inside the run. One-line ConfigError."""
  o, data = cfg.objectives, cfg.data
  if o.weight("locca") > 0 and not data.get("regions", False):
    raise ConfigError("loss_weights.locca trains on region boxes and captions: set "
                      "data.regions=True (the built-in image_text scenes, or a JSONL / "
                      "webdataset source whose examples carry \"regions\"), or set "
                      "loss_weights.locca=0")
  if data.get("regions", False) and data.source not in REGION_SOURCES:
    raise ConfigError(f"data.regions=True reads regions from the built-in scenes or a JSONL / "
                      f"webdataset / ArrayRecord source, not data.source={data.source!r}; "
                      "convert the set to a JSONL manifest or set data.regions=False")
  for name in ("silc", "tips"):
    if o.weight(name) <= 0:
      continue
    if not cfg.optimizer.ema_decay:
      raise ConfigError(f"loss_weights.{name} distils from an EMA teacher and "
                        f"optimizer.ema_decay=0 keeps none; set optimizer.ema_decay (e.g. 0.999)")
    if data.get("max_patches", 0) or o.pack_images:
      raise ConfigError(f"loss_weights.{name} crops and masks square images; set "
                        "data.max_patches=0 and objectives.pack_images=False, or "
                        f"loss_weights.{name}=0")
  for name, step in o.starts:
    if step >= cfg.total_steps:
      raise ConfigError(f"objectives.starts.{name}={step} is not before total_steps="
                        f"{cfg.total_steps}: the objective would never train; lower it")
  if o.starts and not o.at_step(0).weights:
    raise ConfigError("objectives.starts leaves no objective training at step 0; start at "
                      "least one at step 0")


def phase_starts(cfg: Config) -> Tuple[int, ...]:
  """The steps > 0 at which the step's program changes: each objectives.starts step and
  total_steps - unmasked_steps (sorted, distinct)."""
  steps = {s for _, s in cfg.objectives.starts}
  if cfg.unmasked_steps:
    steps.add(cfg.total_steps - cfg.unmasked_steps)
  return tuple(sorted(s for s in steps if s > 0))


def phase_config(cfg: Config, step: int) -> Config:
  """The config the train step runs at `step`: the objectives started by then
  (ObjectivesConfig.at_step), patch dropout off from total_steps - unmasked_steps on."""
  if cfg.unmasked_steps and step >= cfg.total_steps - cfg.unmasked_steps:
    cfg = without_patch_dropout(cfg)
  return dataclasses.replace(cfg, objectives=cfg.objectives.at_step(step))


def check_packing(cfg: Config) -> None:
  """objectives.pack_text: one-line errors where packing would not be exact."""
  o, model = cfg.objectives, cfg.model
  if not o.pack_text:
    return
  design = fusion.design_of(model.fusion)
  if not design.independent_streams:
    raise ConfigError(f"objectives.pack_text needs a fusion whose text tower is encoded on its "
                      f"own (dual_encoder); {model.fusion.name} mixes text with other tokens, "
                      "so the other modality would have to be packed too; set pack_text=False")
  if o.weight("mlm") <= 0:
    raise ConfigError("objectives.pack_text packs the MLM pass; set loss_weights.mlm > 0 or "
                      "objectives.pack_text=False")
  _check_whole_step_rows(cfg, "objectives.pack_text", "objectives.pack_rows", o.pack_rows)
  for m in model.modalities:
    if m.kind != "text":
      continue
    if m.option("key_mask") not in ("pad", "eos"):
      raise ConfigError(f"objectives.pack_text needs model.modalities.{m.name}.key_mask 'pad' "
                        f"or 'eos', got {m.option('key_mask')!r} (its padding is attended to)")
    if m.option("add_cls"):
      raise ConfigError(f"objectives.pack_text needs model.modalities.{m.name}.add_cls=False "
                        "(the tokenizer's [CLS] starts each example)")



def native_aspect(cfg: Config) -> None:
  """data.max_patches (native-aspect images): fills data.patch_size from the image modality's
  patch (cfg.data is the config's own resolved copy) and raises a one-line ConfigError where
  the model cannot take patch rows."""
  data = cfg.data
  if not int(data.get("max_patches", 0)):
    if cfg.objectives.pack_images:
      raise ConfigError("objectives.pack_images packs native-aspect images, and "
                        "data.max_patches=0 feeds square ones; set data.max_patches (e.g. 256) "
                        "or objectives.pack_images=False")
    return
  image = next((m for m in cfg.model.modalities if m.name == "image"), None)
  if image is None or image.kind != "image":
    raise ConfigError("data.max_patches feeds the 'image' modality native-aspect patches, and "
                      "the model has no image modality named 'image'; set data.max_patches=0")
  patch = int(image.option("patch"))
  if not int(data.patch_size):
    data.patch_size = patch
  if int(data.patch_size) != patch:
    raise ConfigError(f"data.patch_size={data.patch_size} differs from the image modality's "
                      f"patch {patch}; set data.patch_size={patch} (or 0: the model's)")
  design = fusion.design_of(cfg.model.fusion)
  if design.position_aligned:
    raise ConfigError(f"data.max_patches with fusion {design.name}: it adds the modalities' "
                      "tokens position by position, and native-aspect grids differ per image; "
                      "set data.max_patches=0 or choose another fusion")
  if cfg.objectives.weight("mim") > 0:
    raise ConfigError("data.max_patches (native-aspect patches) with loss_weights.mim > 0: "
                      "masked image modelling reads square images; set loss_weights.mim=0 or "
                      "data.max_patches=0")
  if cfg.objectives.pack_images:
    _check_image_packing(cfg)
  s = int(data.image_size)
  if data.source == "builtin" and (s % patch or (s // patch) ** 2 > int(data.max_patches)):
    raise ConfigError(f"the built-in scenes are drawn at data.image_size={s}, a grid of "
                      f"{s / patch:g}x{s / patch:g} patches of {patch}, which does not fit "
                      f"data.max_patches={data.max_patches}; raise max_patches to "
                      f"{(s // patch) ** 2} or use a multiple of {patch} for image_size")


def _check_whole_step_rows(cfg: Config, what: str, rows_key: str, rows: int) -> None:
  """A packing (`what`) lays out whole steps: no gradient accumulation, and its rows per
  step (`rows_key`) within [0, batch_size]."""
  if cfg.grad_accum_steps != 1:
    raise ConfigError(f"{what} packs whole steps; it needs grad_accum_steps=1, "
                      f"got {cfg.grad_accum_steps}")
  if not 0 <= rows <= cfg.batch_size:
    raise ConfigError(f"{rows_key}={rows} must be in [0, batch_size={cfg.batch_size}] "
                      "(0 = batch_size)")


def _check_image_packing(cfg: Config) -> None:
  """objectives.pack_images: one-line errors where the packed image tower would not be exact
  or would pack nothing."""
  model, o = cfg.model, cfg.objectives
  if not model.fusion.depth_of("image"):
    raise ConfigError(f"objectives.pack_images packs the image tower, and fusion "
                      f"{model.fusion.name} has none here (model.depth.unimodal for image is "
                      "0); give it a tower or set objectives.pack_images=False")
  if "image" in tokenizers.dropped_patches(model):
    raise ConfigError("objectives.pack_images with patch dropout: the rows are laid out "
                      "for every patch; set model.patch_dropout=0 or pack_images=False")
  _check_whole_step_rows(cfg, "objectives.pack_images", "objectives.image_pack_rows",
                         o.image_pack_rows)
  slots = int(cfg.data.max_patches) + int(bool(model.modality("image").option("add_cls")))
  if o.image_pack_len and o.image_pack_len < slots:
    raise ConfigError(f"objectives.image_pack_len={o.image_pack_len} is shorter than one "
                      f"image's {slots} token slots (1 + data.max_patches); use at least "
                      f"{slots} (0 = {slots})")


def text_ids(model: ModelConfig, data, mlm: bool) -> ModelConfig:
  """Each text modality's ids from the data's tokenizer (mmjax.data.text.from_config):
  pad_id, mask_id, special_ids, vocab_size (and key_mask='eos' / eos_id where padding reuses a
  real token), written where they differ from the embedder's defaults and the config does not
  set them; a set value that contradicts the tokenizer, or a vocab smaller than the ids the
  run produces (the mask id only with MLM), is a ConfigError. Without a data section
  resolve_model keeps the embedder's defaults, the bytes tokenizer's ids."""
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
  fields = tokenizers.EMBEDDERS["text"].__dataclass_fields__
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



def without_patch_dropout(cfg: Config) -> Config:
  """The config with patch dropout off in the model and every modality (unmasked_steps)."""
  m = cfg.model
  mods = tuple(dataclasses.replace(x, options=tuple(
      (k, 0.0 if k == "patch_dropout" else v) for k, v in x.options)) for x in m.modalities)
  model = dataclasses.replace(m, block=dataclasses.replace(m.block, patch_dropout=0.0),
                              modalities=mods)
  return dataclasses.replace(cfg, model=model)


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
  for on, key, rows in ((cfg.objectives.pack_text, "pack_rows", pack_rows(cfg)),
                        (cfg.objectives.pack_images, "image_pack_rows", image_pack_rows(cfg))):
    if on and rows % (d * f):
      raise ConfigError(f"objectives.{key}={rows} is not divisible by the {d * f} batch shards "
                        f"(mesh.data x mesh.fsdp); change {key}")
  return d, f, t



def validate(config, num_devices: int = 1) -> Config:
  """resolve + check_mesh: everything train.py checks before it builds anything."""
  cfg = resolve(config)
  check_mesh(cfg, num_devices)
  return cfg



def token_counts(model: ModelConfig) -> Dict[str, int]:
  """Tokens each modality's embedder produces for the configured input shapes."""
  return {m.name: tokenizers.token_count(m, model.block) for m in model.modalities}
