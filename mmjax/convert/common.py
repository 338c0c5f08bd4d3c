"""What every checkpoint converter shares: the dual-encoder config of a published
architecture, tensor layout changes (PyTorch -> mmjax), the parameter-tree check and the
workdir writer.

Layouts: PyTorch Linear weights are [out, in] (mmjax Dense kernels [in, out]); attention
projections become [E, H, Dh] (q, k, v) and [H, Dh, E] (out); a conv patch embedding
[D, C, ph, pw] becomes the Dense kernel over patches flattened (dy, dx, c) [ph*pw*C, D]
(SigLIP 2's Linear over patches flattened (dy, dx, c) is already that kernel, transposed);
images are NHWC.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional

import ml_collections
import numpy as np

from mmjax import config_lib, configure


class ConvertError(ValueError):
  """A checkpoint that cannot be converted (the message is one line)."""


@dataclasses.dataclass(frozen=True)
class Tower:
  """One transformer tower of a published dual encoder."""
  width: int
  depth: int
  heads: int
  mlp_dim: int


@dataclasses.dataclass(frozen=True)
class DualEncoderSpec:
  """Everything that fixes a CLIP / SigLIP / SigLIP 2 architecture."""
  family: str                    # clip | siglip | siglip2
  vision: Tower
  text: Tower
  embed_dim: int
  image_size: int
  patch: int
  vocab_size: int
  text_len: int
  activation: str = "gelu"       # quick_gelu (OpenAI CLIP) | gelu | gelu_tanh (SigLIP)
  norm_eps: float = 1e-5
  text_activation: str = ""      # '' = activation (open_clip's SigLIP: exact GELU in text)
  text_norm_eps: float = 0.0     # 0 = norm_eps
  max_patches: int = 0           # > 0: native-aspect patch rows (data.max_patches, NaFlex)


# Tokenizer framing of each family (mmjax/data/text.py): CLIP starts with <|startoftext|>,
# ends with <|endoftext|> (pooled there) and lowercases; SigLIP has no start token, ends with
# </s> and pads with it (its text tower attends over the padding and pools the last position).
# SigLIP 2 (Gemma's tokenizer, lowercased by Hugging Face's Siglip2Tokenizer) ends with <eos>
# and pads with <pad>, on the right; its text tower also attends over the padding.
# The text cleaning (lowercase, canonicalize) is the tokenizer's: model_config's arguments.
FRAMING = {
    "clip": ({"cls": "<|startoftext|>", "sep": "<|endoftext|>", "pad": 0}, True),
    "siglip": ({"cls": "", "sep": "</s>", "pad": "</s>"}, False),
    "siglip2": ({"cls": "", "sep": "<eos>", "pad": "<pad>"}, True),
}


def model_config(spec: DualEncoderSpec, tokenizer: str, lowercase: Optional[bool] = None,
                 canonicalize: str = "") -> ml_collections.ConfigDict:
  """The full mmjax config of a published dual encoder (dual_encoder fusion, exactly its
  parameters: model.objective_heads keeps only its alignment temperature), reading text with
  `tokenizer` (a data.tokenizer spec) framed as the family frames it, cleaned with
  `lowercase` (None: the family's FRAMING) and `canonicalize` (data.canonicalize)."""
  c = config_lib.load_config("default")
  clip = spec.family == "clip"
  grid = spec.image_size // spec.patch
  v, t = spec.vision, spec.text
  m = c.model
  m.fusion = "dual_encoder"
  m.width, m.heads, m.mlp_dim, m.embed_dim = v.width, v.heads, v.mlp_dim, spec.embed_dim
  m.activation, m.norm_eps, m.key_bias = spec.activation, spec.norm_eps, True
  m.objective_heads = ("contrastive",) if clip else ("sigmoid",)
  m.pool = "cls" if clip else "mean"
  m.depth = ml_collections.ConfigDict(
      {"unimodal": {"image": v.depth, "text": t.depth}, "joint": 0, "post": 0, "cross": 0})
  image = {"kind": "image", "patch": spec.patch, "grid": (grid, grid),
           "input_shape": (spec.image_size, spec.image_size, 3), "type_embedding": False,
           "mim_token": False, "add_cls": clip, "cls_position": clip, "pre_norm": clip,
           "patch_bias": not clip, "proj_bias": False}
  if not clip:  # SigLIP: attention-pool head, no projection after it
    image.update(pool="map", proj=False)
    image.pop("proj_bias")
  text = {"kind": "text", "vocab_size": spec.vocab_size, "max_len": spec.text_len,
          "width": t.width, "heads": t.heads, "mlp_dim": t.mlp_dim, "type_embedding": False,
          "pool": "last"}
  if spec.text_activation and spec.text_activation != spec.activation:
    text["activation"] = spec.text_activation
  if spec.text_norm_eps and spec.text_norm_eps != spec.norm_eps:
    text["norm_eps"] = spec.text_norm_eps
  if clip:
    text.update(causal=True, key_mask="eos", proj_bias=False)
  else:
    text.update(key_mask="none", proj_bias=True)
  m.modalities = ml_collections.ConfigDict({"image": image, "text": text})
  c.loss_weights = ml_collections.ConfigDict(
      {"contrastive": 1.0 if clip else 0.0, "sigmoid": 0.0 if clip else 1.0,
       "mlm": 0.0, "mim": 0.0, "itm": 0.0})
  c.data.image_size = spec.image_size
  c.data.text_len = spec.text_len
  specials, family_lowercase = FRAMING[spec.family]
  c.data.tokenizer = tokenizer
  c.data.tokenizer_specials = ml_collections.ConfigDict(specials)
  c.data.lowercase = family_lowercase if lowercase is None else bool(lowercase)
  c.data.canonicalize = canonicalize
  if not clip:
    c.data.image_mean, c.data.image_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  if spec.max_patches:  # NaFlex: each image at its own aspect, the table resized per image
    c.data.max_patches, c.data.patch_size = spec.max_patches, spec.patch
  c.eval.evaluators = ("zero_shot", "retrieval")
  return c


# ----------------------------------------------------------------------------- layouts

def linear(w, b=None) -> Dict[str, np.ndarray]:
  """PyTorch Linear [out, in] (+ bias) -> Dense {kernel [in, out], bias}."""
  out = {"kernel": np.asarray(w).T}
  if b is not None:
    out["bias"] = np.asarray(b)
  return out


def layer_norm(w, b) -> Dict[str, np.ndarray]:
  return {"scale": np.asarray(w), "bias": np.asarray(b)}


def attention(q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, heads: int) -> Dict[str, np.ndarray]:
  """Separate [E, E] projections (+ biases) -> MultiHeadAttention's per-head kernels."""
  e = np.asarray(q_w).shape[1]
  dh = np.asarray(q_w).shape[0] // heads
  per = lambda w: np.asarray(w).T.reshape(e, heads, dh)
  out = {"query_kernel": per(q_w), "query_bias": np.asarray(q_b).reshape(heads, dh),
         "key_kernel": per(k_w), "key_bias": np.asarray(k_b).reshape(heads, dh),
         "value_kernel": per(v_w), "value_bias": np.asarray(v_b).reshape(heads, dh),
         "out_kernel": np.asarray(o_w).T.reshape(heads, dh, np.asarray(o_w).shape[0]),
         "out_bias": np.asarray(o_b)}
  return out


def fused_attention(in_w, in_b, o_w, o_b, heads: int) -> Dict[str, np.ndarray]:
  """nn.MultiheadAttention's in_proj [3E, E] (q; k; v stacked) -> per-head kernels."""
  qw, kw, vw = np.split(np.asarray(in_w), 3)
  qb, kb, vb = np.split(np.asarray(in_b), 3)
  return attention(qw, qb, kw, kb, vw, vb, o_w, o_b, heads)


def conv_patch(w) -> np.ndarray:
  """Conv2d weight [D, C, ph, pw] -> Dense kernel [ph*pw*C, D] in (dy, dx, c) order."""
  w = np.asarray(w)
  return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def mlp(fc1_w, fc1_b, fc2_w, fc2_b) -> Dict[str, Any]:
  return {"fc1": linear(fc1_w, fc1_b), "fc2": linear(fc2_w, fc2_b)}


def block(ln1, attn, ln2, mlp_params) -> Dict[str, Any]:
  """One pre-LN EncoderBlock's parameters."""
  return {"ln_attn": ln1, "attn": attn, "ln_mlp": ln2, "mlp": mlp_params}


def tower(blocks, final_norm) -> Dict[str, Any]:
  out = {f"layer_{i}": b for i, b in enumerate(blocks)}
  out["ln_final"] = final_norm
  return out


# ----------------------------------------------------------------------------- checks

def _paths(tree, prefix=""):
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from _paths(v, f"{prefix}/{k}" if prefix else str(k))
  else:
    yield prefix, tuple(np.shape(tree))


def check_params(params: Mapping[str, Any], config) -> Dict[str, Any]:
  """The converted tree against the model's own parameter shapes: the same paths and shapes,
  or a one-line ConvertError naming the first difference. Returns params as float32."""
  import jax  # pylint: disable=import-outside-toplevel
  shapes = param_shapes(config)
  want = {p: tuple(s.shape) for p, s in _leaf_items(shapes)}
  got = dict(_paths(params))
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  if missing:
    raise ConvertError(f"converted checkpoint lacks parameter {missing[0]} "
                       f"({len(missing)} missing); the source layout is not the expected one")
  if extra:
    raise ConvertError(f"converted checkpoint has unexpected parameter {extra[0]} "
                       f"({len(extra)} extra); the source layout is not the expected one")
  for p in sorted(want):
    if want[p] != got[p]:
      raise ConvertError(f"parameter {p} has shape {got[p]} in the checkpoint but the model "
                         f"expects {want[p]}; the architecture options do not match")
  return jax.tree.map(lambda x: np.asarray(x, np.float32), dict(params))


def param_shapes(config):
  """{path: ShapeDtypeStruct} tree of the model's parameters (no memory allocated)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from mmjax import models  # pylint: disable=import-outside-toplevel
  model = models.build_model(config)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), models.dummy_batch(config, 1), method=model.init_all))["params"]
  return nn.unbox(shapes)


def _leaf_items(tree, prefix=""):
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from _leaf_items(v, f"{prefix}/{k}" if prefix else str(k))
  else:
    yield prefix, tree


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """A PyTorch state dict as numpy arrays: .safetensors (numpy only) or .bin / .pt / .pth
  (through torch, imported only then)."""
  if not os.path.isfile(path):
    raise ConvertError(f"checkpoint file not found: {path}; pass an existing weights file")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      return dict(load_file(path))
    except Exception as e:  # a truncated or foreign file
      raise ConvertError(f"cannot read {path} as safetensors ({type(e).__name__}); the file "
                         "is corrupt or not a safetensors checkpoint") from None
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConvertError(f"{path} is a PyTorch pickle; reading it needs torch (pip install "
                       "torch), or convert it to .safetensors first") from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ConvertError(f"cannot read {path} with torch.load ({type(e).__name__}); the file is "
                       "corrupt or not a state dict") from None
  sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
  return {k.removeprefix("module."): v.float().numpy() for k, v in sd.items()}


class Weights:
  """A state dict that records which entries a converter read: leftovers are an error (a
  layout the converter does not know), so nothing is silently dropped."""

  def __init__(self, sd: Mapping[str, np.ndarray], ignore=()):
    self._sd = {k: v for k, v in sd.items() if not any(k.endswith(i) for i in ignore)}
    self._used = set()

  def __call__(self, key: str) -> np.ndarray:
    if key not in self._sd:
      raise ConvertError(f"the checkpoint lacks {key}; it is not the expected layout (or a "
                         "different architecture than the config says)")
    self._used.add(key)
    return np.asarray(self._sd[key], np.float32)

  def has(self, key: str) -> bool:
    return key in self._sd

  def count(self, prefix: str) -> int:
    """How many numbered children prefix.0, prefix.1, ... exist."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in self._sd):
      n += 1
    return n

  def check_all_used(self):
    left = sorted(set(self._sd) - self._used)
    if left:
      raise ConvertError(f"the checkpoint has {len(left)} entries the converter does not map "
                         f"(first: {left[0]}); this layout is not supported yet")


def count(params) -> int:
  return int(sum(np.prod(s) for _, s in _paths(params)))


def write_workdir(config: ml_collections.ConfigDict, params, workdir: str,
                  source: Optional[str] = None) -> str:
  """An mmjax workdir holding step 0: these parameters, a fresh optimizer state, and the
  config (what eval.py --workdir restores and train.py --config.init_from starts from)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmjax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from mmjax import models, sharding, train_lib  # pylint: disable=import-outside-toplevel
  ckpt_dir = ckpt_lib.checkpoint_dir(workdir)
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ConvertError(f"{workdir} already holds checkpoints; pass a new --out folder")
  if source:
    config.converted_from = source
  cfg = configure.resolve(config)
  model = models.build_model(cfg)
  tx, _ = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  state, _ = train_lib.create_state(cfg, model, tx, mesh)
  new = jax.tree.map(lambda old, x: jax.device_put(np.asarray(x, old.dtype), old.sharding),
                     state.params, {"params": params})
  state = dataclasses.replace(state, params=new)
  ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=1, async_save=False)
  ckpt.save(0, state, config=config, force=True)
  ckpt.close()
  return workdir
