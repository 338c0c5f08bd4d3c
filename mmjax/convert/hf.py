"""Hugging Face CLIP and SigLIP checkpoints (a local folder: config.json + model.safetensors
or pytorch_model.bin, as `save_pretrained` writes it) -> mmjax parameters and config.

  CLIP    vision: conv patches (no bias) + [CLS] + positions over [CLS] and patches, pre-LN,
          pre-norm blocks, LN on [CLS], projection without bias; text: causal, pooled at the
          end-of-text token, LN, projection without bias; logit_scale.
  SigLIP  vision: conv patches (with bias) + positions, blocks, LN, attention-pool head
          (probe, MHA, LN, MLP), no projection; text: bidirectional over all 64 positions
          (padding included), LN, last position, a Dense head with bias; logit_scale and
          logit_bias (sigmoid_t, sigmoid_b).
  SigLIP 2 (Siglip2Model, model_type 'siglip2') SigLIP's towers and heads, but patches come
          flattened (dy, dx, c), the order mmjax cuts them in, through a Linear, and the
          square position table (num_patches) is resized per image with
          F.interpolate(bilinear, antialias=True), the weights tokenizers.resize_weights
          computes. Converted for NaFlex (data.max_patches = num_patches: patch rows of each
          image's own grid) or, with max_patches=0, fixed resolution (square images of
          sqrt(num_patches) patches a side, which read the table as it is).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

from mmjax.convert import common as C

ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _activation(cfg, where, default="quick_gelu") -> str:
  act = cfg.get("hidden_act", default)
  if act not in ACTIVATIONS:
    raise C.ConvertError(f"{where}.hidden_act={act!r} is not supported; known: "
                         f"{', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[act]


def read_config(folder: str) -> Dict[str, Any]:
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise C.ConvertError(f"{folder} has no config.json; pass a folder written by "
                         "save_pretrained (config.json + model.safetensors)")
  return read_json(path)


def read_json(path: str) -> Dict[str, Any]:
  """A folder's JSON file; a broken one is a one-line ConvertError."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise C.ConvertError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the "
                         "download is incomplete") from None


FAMILIES = ("clip", "siglip", "siglip2")


def _defaults(family: str):
  """transformers' defaults where a config.json leaves a key out (CLIP ViT-B/32; SigLIP and
  SigLIP 2 B/16): (vision, text)."""
  clip = family == "clip"
  dv = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, image_size=224, patch_size=32 if clip else 16,
            layer_norm_eps=1e-5 if clip else 1e-6, num_patches=256, num_channels=3,
            vision_use_head=True)
  dt = dict(hidden_size=512 if clip else 768, intermediate_size=2048 if clip else 3072,
            num_attention_heads=8 if clip else 12, num_hidden_layers=12,
            vocab_size=49408 if clip else 32000, max_position_embeddings=77 if clip else 64,
            layer_norm_eps=1e-5 if clip else 1e-6)
  return dv, dt


def siglip2_geometry(v: Dict[str, Any], max_patches: int) -> Tuple[int, int, int]:
  """(patch, image_size, max_patches) of a Siglip2VisionConfig dict: the square table's side
  in patches gives the fixed-resolution image size; max_patches < 0 is the table's own
  num_patches (NaFlex), 0 fixed resolution. One-line errors for what mmjax cannot hold."""
  dv, _ = _defaults("siglip2")
  g = lambda k: v.get(k, dv[k])
  patch, n = g("patch_size"), int(g("num_patches"))
  if isinstance(patch, (list, tuple)):
    if len(set(patch)) != 1:
      raise C.ConvertError(f"vision_config.patch_size={list(patch)} is not square; mmjax "
                           "imports square patches only")
    patch = patch[0]
  side = int(round(n ** 0.5))
  if side * side != n:
    raise C.ConvertError(f"vision_config.num_patches={n} is not a square number; the "
                         "position table of a Siglip2 checkpoint is a square grid")
  if int(g("num_channels")) != 3:
    raise C.ConvertError(f"vision_config.num_channels={g('num_channels')} is not supported; "
                         "mmjax imports RGB (3-channel) image towers")
  if not g("vision_use_head"):
    raise C.ConvertError("vision_config.vision_use_head=false (no attention-pool head) is not "
                         "supported; mmjax imports Siglip2 with its pooling head")
  return int(patch), side * int(patch), n if max_patches < 0 else int(max_patches)


def spec_of(cfg: Dict[str, Any], max_patches: int = -1) -> C.DualEncoderSpec:
  """The architecture of a CLIPConfig / SiglipConfig / Siglip2Config dict. max_patches
  (SigLIP 2 only): < 0 the checkpoint's num_patches (NaFlex), 0 fixed resolution, N a budget."""
  family = cfg.get("model_type")
  if family not in FAMILIES:
    raise C.ConvertError(f"model_type={family!r} is not supported; mmjax converts 'clip', "
                         "'siglip' and 'siglip2' checkpoints")
  if family != "siglip2" and max_patches > 0:
    raise C.ConvertError(f"max_patches={max_patches} applies to siglip2 (NaFlex) checkpoints, "
                         f"not {family}; leave it out (eval.py --config.data.max_patches=N "
                         "reads any converted model at native aspect)")
  v, t = cfg.get("vision_config", {}), cfg.get("text_config", {})
  clip = family == "clip"
  dv, dt = _defaults(family)
  gv = lambda k: v.get(k, dv[k])
  gt = lambda k: t.get(k, dt[k])
  tower = lambda g: C.Tower(g("hidden_size"), g("num_hidden_layers"), g("num_attention_heads"),
                            g("intermediate_size"))
  embed = cfg.get("projection_dim", 512) if clip else gv("hidden_size")
  if not clip and (t.get("projection_size") or gt("hidden_size")) != gv("hidden_size"):
    raise C.ConvertError("SigLIP text projection_size differs from the vision width; this "
                         "layout is not supported yet")
  patch, size, budget = gv("patch_size"), gv("image_size"), 0
  if family == "siglip2":
    patch, size, budget = siglip2_geometry(v, max_patches)
  act = "gelu_pytorch_tanh" if family == "siglip2" else "quick_gelu"
  return C.DualEncoderSpec(
      family=family, vision=tower(gv), text=tower(gt), embed_dim=embed,
      image_size=size, patch=patch, vocab_size=gt("vocab_size"),
      text_len=gt("max_position_embeddings"),
      activation=_activation(v, "vision_config", act), norm_eps=gv("layer_norm_eps"),
      text_activation=_activation(t, "text_config", act), text_norm_eps=gt("layer_norm_eps"),
      max_patches=budget)


def _encoder(w: C.Weights, prefix: str, depth: int, heads: int, final: str):
  blocks = []
  for i in range(depth):
    p = f"{prefix}.encoder.layers.{i}"
    a = lambda n, x: w(f"{p}.self_attn.{n}_proj.{x}")
    blocks.append(C.block(
        C.layer_norm(w(f"{p}.layer_norm1.weight"), w(f"{p}.layer_norm1.bias")),
        C.attention(a("q", "weight"), a("q", "bias"), a("k", "weight"), a("k", "bias"),
                    a("v", "weight"), a("v", "bias"), a("out", "weight"), a("out", "bias"),
                    heads),
        C.layer_norm(w(f"{p}.layer_norm2.weight"), w(f"{p}.layer_norm2.bias")),
        C.mlp(w(f"{p}.mlp.fc1.weight"), w(f"{p}.mlp.fc1.bias"), w(f"{p}.mlp.fc2.weight"),
              w(f"{p}.mlp.fc2.bias"))))
  return C.tower(blocks, C.layer_norm(w(f"{prefix}.{final}.weight"),
                                      w(f"{prefix}.{final}.bias")))


def convert_params(sd, spec: C.DualEncoderSpec) -> Dict[str, Any]:
  """mmjax parameter tree of a CLIPModel / SiglipModel / Siglip2Model state dict."""
  w = C.Weights(sd, ignore=("position_ids",))
  g = spec.image_size // spec.patch
  v, t = spec.vision, spec.text
  ve, te = "vision_model.embeddings", "text_model.embeddings"
  pos = w(f"{ve}.position_embedding.weight")
  patches = w(f"{ve}.patch_embedding.weight")
  if spec.family == "siglip2":  # a Linear over patches already flattened (dy, dx, c)
    image = {"proj": {"kernel": C.linear(patches)["kernel"]}}
  else:
    image = {"proj": {"kernel": C.conv_patch(patches)}}
  text = {"token_embedding": w(f"{te}.token_embedding.weight"),
          "pos_embedding": w(f"{te}.position_embedding.weight")}
  params: Dict[str, Any] = {"embed_image": image, "embed_text": text}
  if spec.family == "clip":
    image.update(cls=w(f"{ve}.class_embedding"), cls_pos=pos[0],
                 pos_embedding=pos[1:].reshape(g, g, -1),
                 pre_norm=C.layer_norm(w("vision_model.pre_layrnorm.weight"),
                                       w("vision_model.pre_layrnorm.bias")))
    params["fusion"] = {
        "tower_image": _encoder(w, "vision_model", v.depth, v.heads, "post_layernorm"),
        "tower_text": _encoder(w, "text_model", t.depth, t.heads, "final_layer_norm")}
    params["proj_image"] = {"kernel": w("visual_projection.weight").T}
    params["proj_text"] = {"kernel": w("text_projection.weight").T}
    params["logit_scale"] = w("logit_scale").reshape(())
  else:
    image.update(pos_embedding=pos.reshape(g, g, -1))
    image["proj"]["bias"] = w(f"{ve}.patch_embedding.bias")
    params["fusion"] = {
        "tower_image": _encoder(w, "vision_model", v.depth, v.heads, "post_layernorm"),
        "tower_text": _encoder(w, "text_model", t.depth, t.heads, "final_layer_norm")}
    h = "vision_model.head"
    params["map_image"] = {
        "probe": w(f"{h}.probe").reshape(1, -1),
        "attn": C.fused_attention(w(f"{h}.attention.in_proj_weight"),
                                  w(f"{h}.attention.in_proj_bias"),
                                  w(f"{h}.attention.out_proj.weight"),
                                  w(f"{h}.attention.out_proj.bias"), v.heads),
        "ln": C.layer_norm(w(f"{h}.layernorm.weight"), w(f"{h}.layernorm.bias")),
        "mlp": C.mlp(w(f"{h}.mlp.fc1.weight"), w(f"{h}.mlp.fc1.bias"),
                     w(f"{h}.mlp.fc2.weight"), w(f"{h}.mlp.fc2.bias"))}
    params["proj_text"] = C.linear(w("text_model.head.weight"), w("text_model.head.bias"))
    params["sigmoid_t"] = w("logit_scale").reshape(())
    params["sigmoid_b"] = w("logit_bias").reshape(())
  w.check_all_used()
  return params


def default_tokenizer(folder: str) -> str:
  """The folder's own tokenizer as a data.tokenizer spec ('' if it has none)."""
  if os.path.isfile(os.path.join(folder, "tokenizer.json")):
    return "hf:" + os.path.join(folder, "tokenizer.json")
  if os.path.isfile(os.path.join(folder, "spiece.model")):
    return "sentencepiece:" + os.path.join(folder, "spiece.model")
  return ""


def text_cleaning(folder: str, tokenizer: str, family: str) -> Tuple[bool, str]:
  """(data.lowercase, data.canonicalize) as the folder's Hugging Face tokenizer cleans text:
  SiglipTokenizer (a SentencePiece model) lowercases (its do_lower_case) and canonicalizes;
  a tokenizer.json carries its own normalizer, so only CLIP's lowercasing is kept."""
  if family != "siglip" or not tokenizer.startswith(("sentencepiece:", "spm:")):
    return C.FRAMING[family][1], ""
  path = os.path.join(folder, "tokenizer_config.json")
  cfg = read_json(path) if os.path.isfile(path) else {}
  return bool(cfg.get("do_lower_case", True)), "hf"


def _token_name(value) -> str:
  """A tokenizer_config.json special token: a string or an AddedToken dict."""
  return str(value.get("content", "")) if isinstance(value, dict) else str(value or "")


def siglip2_framing(folder: str) -> Dict[str, str]:
  """data.tokenizer_specials of a SigLIP 2 folder: FRAMING's (no start token, <eos>, <pad>),
  with the token names, add_bos_token / add_eos_token of its tokenizer_config.json when it has
  one. Left padding (the tower pools the last position) is a one-line error: mmjax pads on the
  right, as the published SigLIP 2 tokenizers do."""
  specials = dict(C.FRAMING["siglip2"][0])
  path = os.path.join(folder, "tokenizer_config.json")
  if not os.path.isfile(path):
    return specials
  cfg = read_json(path)
  if cfg.get("padding_side", "right") != "right":
    raise C.ConvertError(f"{path} pads on the {cfg['padding_side']}; mmjax frames text padded "
                         "on the right (the text tower pools the last position), so "
                         "embeddings would differ: set padding_side to right")
  for role, key in (("sep", "eos_token"), ("pad", "pad_token")):
    specials[role] = _token_name(cfg.get(key)) or specials[role]
  if cfg.get("add_bos_token", False):
    specials["cls"] = _token_name(cfg.get("bos_token")) or "<bos>"
  if not cfg.get("add_eos_token", True):
    specials["sep"] = ""
  return specials


def set_image_preprocessing(config, folder: str, family: str) -> None:
  """data.image_resize as Hugging Face's image processors resize (torchvision; SigLIP's and
  any processor without a centre crop: straight to the square size; JPEGs decoded in full),
  and data.image_mean / image_std from the folder's preprocessor_config.json when it has one."""
  path = os.path.join(folder, "preprocessor_config.json")
  pre = read_json(path) if os.path.isfile(path) else {}
  size = pre.get("size", {})
  crop = ((not isinstance(size, dict) or "shortest_edge" in size)
          and bool(pre.get("do_center_crop", True)) if pre else family == "clip")
  config.data.image_resize = "torchvision" if crop else "torchvision_squash"
  config.data.jpeg_draft = False  # the source library decodes JPEGs in full
  if pre.get("image_mean") and pre.get("image_std"):
    config.data.image_mean = tuple(float(x) for x in pre["image_mean"])
    config.data.image_std = tuple(float(x) for x in pre["image_std"])


def convert(folder: str, tokenizer: str = "", max_patches: int = -1
            ) -> Tuple[Any, Dict[str, Any]]:
  """(mmjax ConfigDict, parameter tree) of a Hugging Face CLIP / SigLIP / SigLIP 2 folder.
  max_patches (SigLIP 2): < 0 NaFlex at the checkpoint's num_patches, 0 fixed resolution,
  N > 0 NaFlex at a budget of N patches."""
  if not os.path.isdir(folder):
    raise C.ConvertError(f"{folder} is not a folder; pass the folder save_pretrained wrote")
  spec = spec_of(read_config(folder), max_patches)
  files = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))]
  if not files:
    raise C.ConvertError(f"{folder} has no {' or '.join(WEIGHT_FILES)}; download the "
                         "weights too")
  tokenizer = tokenizer or default_tokenizer(folder)
  if not tokenizer:
    raise C.ConvertError(f"{folder} has no tokenizer.json or spiece.model; pass "
                         "--tokenizer=hf:/path/tokenizer.json (or sentencepiece:/path)")
  config = C.model_config(spec, tokenizer, *text_cleaning(folder, tokenizer, spec.family))
  if spec.family == "siglip2":
    config.data.tokenizer_specials.update(siglip2_framing(folder))
  set_image_preprocessing(config, folder, spec.family)
  params = convert_params(C.load_state_dict(os.path.join(folder, files[0])), spec)
  return config, C.check_params(params, config)
