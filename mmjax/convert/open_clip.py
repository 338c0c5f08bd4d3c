"""open_clip checkpoints (a model name or an open_clip model-config JSON, plus a state-dict
file) -> mmjax parameters and config.

  CLIP layouts (ViT-B-32, ViT-B-16, ViT-L-14 and their -quickgelu variants): open_clip's own
  VisionTransformer (conv1 without bias, class_embedding, positional_embedding over [CLS] +
  patches, ln_pre, resblocks with fused in_proj, ln_post, proj [W, E]) and TextTransformer
  (causal, pooled at the highest id = end-of-text, ln_final, text_projection [W, E]).
  SigLIP layouts (ViT-B-16-SigLIP*, ViT-L-16-SigLIP-256, ViT-SO400M-14-SigLIP*): a timm ViT
  trunk (patch_embed with bias, pos_embed, blocks with fused qkv, norm, attn_pool: latent
  probe, q, kv, proj, norm, mlp) and a bidirectional text tower pooled at the last position
  with a Linear projection (bias); logit_scale and logit_bias.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from mmjax.convert import common as C

# open_clip's model configs (the architecture part), by name.
_CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
MODELS: Dict[str, Dict[str, Any]] = {
    "ViT-B-32": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
                                                  "patch_size": 32}, "text_cfg": _CLIP_TEXT},
    "ViT-B-16": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
                                                  "patch_size": 16}, "text_cfg": _CLIP_TEXT},
    "ViT-L-14": {"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024,
                                                  "patch_size": 14},
                 "text_cfg": dict(_CLIP_TEXT, width=768, heads=12)},
}
for _name in list(MODELS):
  MODELS[f"{_name}-quickgelu"] = dict(MODELS[_name], quick_gelu=True)
_SIGLIP_TEXT = {"context_length": 64, "vocab_size": 32000, "width": 768, "heads": 12,
                "layers": 12, "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}
for _size in (224, 256, 384, 512):
  suffix = "" if _size == 224 else f"-{_size}"
  MODELS[f"ViT-B-16-SigLIP{suffix}"] = {
      "embed_dim": 768, "vision_cfg": {"image_size": _size,
                                       "timm_model_name": f"vit_base_patch16_siglip_{_size}"},
      "text_cfg": _SIGLIP_TEXT}
MODELS["ViT-L-16-SigLIP-256"] = {
    "embed_dim": 1024, "vision_cfg": {"image_size": 256,
                                      "timm_model_name": "vit_large_patch16_siglip_256"},
    "text_cfg": dict(_SIGLIP_TEXT, width=1024, heads=16, layers=24)}
for _size in (224, 384):
  suffix = "" if _size == 224 else f"-{_size}"
  MODELS[f"ViT-SO400M-14-SigLIP{suffix}"] = {
      "embed_dim": 1152, "vision_cfg": {"image_size": _size,
                                        "timm_model_name": f"vit_so400m_patch14_siglip_{_size}"},
      "text_cfg": dict(_SIGLIP_TEXT, width=1152, heads=16, layers=27, mlp_ratio=3.7362)}

# timm trunks: (patch, width, depth, heads, mlp_dim) of each SigLIP vision tower.
TIMM = {"vit_base_patch16_siglip": (16, 768, 12, 12, 3072),
        "vit_large_patch16_siglip": (16, 1024, 24, 16, 4096),
        "vit_so400m_patch14_siglip": (14, 1152, 27, 16, 4304)}


def model_cfg(name: str = "", config_file: str = "") -> Dict[str, Any]:
  """The open_clip model config of a known name, or read from an open_clip JSON file."""
  if config_file:
    if not os.path.isfile(config_file):
      raise C.ConvertError(f"model config {config_file} not found; pass an open_clip "
                           "model-config JSON")
    with open(config_file, encoding="utf-8") as f:
      return json.load(f)
  if name not in MODELS:
    raise C.ConvertError(f"unknown open_clip model {name!r}; known: {', '.join(MODELS)} (or "
                         "pass --model_config=FILE.json)")
  return MODELS[name]


# open_clip's tokenizer `clean` -> (data.lowercase, data.canonicalize)
CLEAN = {"lower": (True, ""), "whitespace": (False, ""), "canonicalize": (True, "big_vision")}


def text_cleaning(cfg: Mapping[str, Any], family: str) -> Tuple[bool, str]:
  """How open_clip's tokenizer cleans this model's text: text_cfg.tokenizer_kwargs.clean,
  else its default ('lower' for CLIP's BPE; SigLIP configs name 'canonicalize')."""
  kwargs = cfg.get("text_cfg", {}).get("tokenizer_kwargs", {}) or {}
  clean = kwargs.get("clean", "lower" if family == "clip" else "canonicalize")
  if clean not in CLEAN:
    raise C.ConvertError(f"unknown open_clip tokenizer clean {clean!r} in text_cfg."
                         f"tokenizer_kwargs; known: {', '.join(CLEAN)}")
  return CLEAN[clean]


def spec_of(cfg: Mapping[str, Any]) -> C.DualEncoderSpec:
  v, t = cfg["vision_cfg"], cfg["text_cfg"]
  text_mlp = int(t["width"] * t.get("mlp_ratio", 4.0))
  text = C.Tower(t["width"], t["layers"], t["heads"], text_mlp)
  eps = t.get("norm_kwargs", {}).get("eps", 1e-5)
  if v.get("timm_model_name"):
    base = next((k for k in TIMM if v["timm_model_name"].startswith(k)), None)
    if base is None and "heads" not in v:
      raise C.ConvertError(f"unknown timm trunk {v['timm_model_name']!r}; known: "
                           f"{', '.join(TIMM)} (or give vision_cfg patch_size, width, layers, "
                           "heads, mlp_dim in the model config)")
    patch, width, depth, heads, mlp = TIMM[base] if base else (
        v["patch_size"], v["width"], v["layers"], v["heads"], v["mlp_dim"])
    return C.DualEncoderSpec(
        family="siglip", vision=C.Tower(width, depth, heads, mlp), text=text,
        embed_dim=cfg["embed_dim"], image_size=v["image_size"], patch=patch,
        vocab_size=t["vocab_size"], text_len=t["context_length"], activation="gelu",
        norm_eps=1e-6, text_norm_eps=eps)
  width = v["width"]
  heads = width // v.get("head_width", 64)
  vision = C.Tower(width, v["layers"], heads, int(width * v.get("mlp_ratio", 4.0)))
  return C.DualEncoderSpec(
      family="clip", vision=vision, text=text, embed_dim=cfg["embed_dim"],
      image_size=v["image_size"], patch=v["patch_size"], vocab_size=t["vocab_size"],
      text_len=t["context_length"], activation="quick_gelu" if cfg.get("quick_gelu") else "gelu",
      norm_eps=1e-5, text_norm_eps=eps)


def _resblocks(w: C.Weights, prefix: str, depth: int, heads: int):
  blocks = []
  for i in range(depth):
    p = f"{prefix}.resblocks.{i}"
    blocks.append(C.block(
        C.layer_norm(w(f"{p}.ln_1.weight"), w(f"{p}.ln_1.bias")),
        C.fused_attention(w(f"{p}.attn.in_proj_weight"), w(f"{p}.attn.in_proj_bias"),
                          w(f"{p}.attn.out_proj.weight"), w(f"{p}.attn.out_proj.bias"), heads),
        C.layer_norm(w(f"{p}.ln_2.weight"), w(f"{p}.ln_2.bias")),
        C.mlp(w(f"{p}.mlp.c_fc.weight"), w(f"{p}.mlp.c_fc.bias"), w(f"{p}.mlp.c_proj.weight"),
              w(f"{p}.mlp.c_proj.bias"))))
  return blocks


def _timm_blocks(w: C.Weights, prefix: str, depth: int, heads: int):
  blocks = []
  for i in range(depth):
    p = f"{prefix}.blocks.{i}"
    blocks.append(C.block(
        C.layer_norm(w(f"{p}.norm1.weight"), w(f"{p}.norm1.bias")),
        C.fused_attention(w(f"{p}.attn.qkv.weight"), w(f"{p}.attn.qkv.bias"),
                          w(f"{p}.attn.proj.weight"), w(f"{p}.attn.proj.bias"), heads),
        C.layer_norm(w(f"{p}.norm2.weight"), w(f"{p}.norm2.bias")),
        C.mlp(w(f"{p}.mlp.fc1.weight"), w(f"{p}.mlp.fc1.bias"), w(f"{p}.mlp.fc2.weight"),
              w(f"{p}.mlp.fc2.bias"))))
  return blocks


def _ln(w, p):
  return C.layer_norm(w(f"{p}.weight"), w(f"{p}.bias"))


def convert_params(sd, spec: C.DualEncoderSpec) -> Dict[str, Any]:
  """mmjax parameter tree of an open_clip CLIP / CustomTextCLIP state dict."""
  w = C.Weights(sd, ignore=("attn_mask", "position_ids"))
  g = spec.image_size // spec.patch
  v, t = spec.vision, spec.text
  tp = "text." if w.has("text.token_embedding.weight") else ""  # CustomTextCLIP nests text
  text = {"token_embedding": w(f"{tp}token_embedding.weight"),
          "pos_embedding": w(f"{tp}positional_embedding")}
  text_tower = C.tower(_resblocks(w, f"{tp}transformer", t.depth, t.heads),
                       _ln(w, f"{tp}ln_final"))
  params: Dict[str, Any] = {"embed_text": text}
  if spec.family == "clip":
    pos = w("visual.positional_embedding")
    params["embed_image"] = {
        "proj": {"kernel": C.conv_patch(w("visual.conv1.weight"))},
        "cls": w("visual.class_embedding"), "cls_pos": pos[0],
        "pos_embedding": pos[1:].reshape(g, g, -1), "pre_norm": _ln(w, "visual.ln_pre")}
    params["fusion"] = {
        "tower_image": C.tower(_resblocks(w, "visual.transformer", v.depth, v.heads),
                               _ln(w, "visual.ln_post")),
        "tower_text": text_tower}
    params["proj_image"] = {"kernel": w("visual.proj")}
    if w.has(f"{tp}text_projection.weight"):
      params["proj_text"] = C.linear(w(f"{tp}text_projection.weight"),
                                     w(f"{tp}text_projection.bias"))
    else:
      params["proj_text"] = {"kernel": w(f"{tp}text_projection")}
    params["logit_scale"] = w("logit_scale").reshape(())
  else:
    tr = "visual.trunk"
    params["embed_image"] = {
        "proj": {"kernel": C.conv_patch(w(f"{tr}.patch_embed.proj.weight")),
                 "bias": w(f"{tr}.patch_embed.proj.bias")},
        "pos_embedding": w(f"{tr}.pos_embed").reshape(g, g, -1)}
    params["fusion"] = {
        "tower_image": C.tower(_timm_blocks(w, tr, v.depth, v.heads), _ln(w, f"{tr}.norm")),
        "tower_text": text_tower}
    ap = f"{tr}.attn_pool"
    qw, qb = w(f"{ap}.q.weight"), w(f"{ap}.q.bias")
    kw, vw = np.split(w(f"{ap}.kv.weight"), 2)
    kb, vb = np.split(w(f"{ap}.kv.bias"), 2)
    params["map_image"] = {
        "probe": w(f"{ap}.latent").reshape(1, -1),
        "attn": C.attention(qw, qb, kw, kb, vw, vb, w(f"{ap}.proj.weight"),
                            w(f"{ap}.proj.bias"), v.heads),
        "ln": _ln(w, f"{ap}.norm"),
        "mlp": C.mlp(w(f"{ap}.mlp.fc1.weight"), w(f"{ap}.mlp.fc1.bias"),
                     w(f"{ap}.mlp.fc2.weight"), w(f"{ap}.mlp.fc2.bias"))}
    params["proj_text"] = C.linear(w(f"{tp}text_projection.weight"),
                                   w(f"{tp}text_projection.bias"))
    params["sigmoid_t"] = w("logit_scale").reshape(())
    params["sigmoid_b"] = w("logit_bias").reshape(())
  w.check_all_used()
  return params


def convert(weights: str, tokenizer: str, name: str = "",
            config_file: str = "") -> Tuple[Any, Dict[str, Any]]:
  """(mmjax ConfigDict, parameter tree) of an open_clip state dict."""
  if not tokenizer:
    raise C.ConvertError("open_clip checkpoints carry no tokenizer; pass --tokenizer=hf:/path/"
                         "tokenizer.json (CLIP BPE) or sentencepiece:/path (SigLIP)")
  cfg = model_cfg(name, config_file)
  spec = spec_of(cfg)
  config = C.model_config(spec, tokenizer, *text_cleaning(cfg, spec.family))
  # open_clip's preprocess: PIL resize before RGB; its SigLIP weights straight to the square
  config.data.image_resize = "pil" if spec.family == "clip" else "pil_squash"
  config.data.jpeg_draft = False  # the source library decodes JPEGs in full
  params = convert_params(C.load_state_dict(weights), spec)
  return config, C.check_params(params, config)
