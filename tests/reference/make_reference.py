"""Reference models for the conversion tests, run in the reference environment
(.venv-ref: torch CPU, transformers, open_clip_torch; `make .venv-ref/.stamp`).

  python tests/reference/make_reference.py LAYOUT OUT_DIR

Builds LAYOUT at random init (seeded, every parameter perturbed so that no two are equal and
a swapped mapping shows), saves it the way its library saves checkpoints, and writes
OUT_DIR/reference.npz: the inputs (images NHWC, text ids) and the reference outputs (image and
text embeddings before normalization, image->text logits).

Layouts: hf_clip, hf_siglip (small), open_clip_clip, open_clip_siglip (small),
open_clip_vit_b16 (full-size ViT-B/16 CLIP).

  python tests/reference/make_reference.py hf_siglip2 OUT_DIR

A small transformers Siglip2Model (a 4 x 4 position table of patches of 8), saved with
save_pretrained, and OUT_DIR/reference.npz: the same outputs for square 32 x 32 images (the
fixed-resolution use, patches cut by the Siglip2 image processor's own function), and
`naflex_*`: one batch of patch rows of three grids of other aspects, zero-padded to the
table's 16 patches (pixel_attention_mask, spatial_shapes), and `interp_<h>x<w>`: the table
resized by F.interpolate(bilinear, antialias=True, align_corners=False) to each grid.

  python tests/reference/make_reference.py inputs OUT_DIR

The four small layouts in OUT_DIR/<layout> (each as above), image files of several sizes and
modes in OUT_DIR/images, and OUT_DIR/<layout>/inputs.npz: the reference library's own
features of each file, preprocessed as it preprocesses (open_clip: its image_transform;
Hugging Face: the image processor saved in the folder), and of raw strings, tokenized by its
tokenizer (OUT_DIR/<layout>/text_tokenizer: framing as the family's tokenizer frames).

  python tests/reference/make_reference.py canonicalize < strings.json

Prints [open_clip's canonicalize_text of each string, Hugging Face SiglipTokenizer's
canonicalize_text of each (lowercasing on)] as JSON.
"""
import json
import os
import sys

import numpy as np
import torch

# PyPI's torchvision is built against the CUDA torch; beside the CPU build its C++ ops are
# missing and its import fails registering fake kernels for them. open_clip only needs
# torchvision's Python transforms, so declare the two op schemas it trips on first.
for _op in ("nms", "qnms"):
  torch.library.define(f"torchvision::{_op}",
                       "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

V, L, IMG, PATCH = 100, 12, 32, 8


def perturb(model, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))
  return model.eval()


def word_tokenizer(path, specials, size=V):
  """A WordLevel tokenizer.json over `size` ids ('w<i>'), these special tokens at their ids."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {f"w{i}": i for i in range(size)}
  for i, tok in specials.items():
    del vocab[f"w{i}"]
    vocab[tok] = i
  t = Tokenizer(models.WordLevel(vocab, unk_token=specials.get(2, "w3")))
  t.pre_tokenizer = pre_tokenizers.Whitespace()
  t.add_special_tokens(list(specials.values()))
  t.save(path)


def text_ids(rng, n, family, length=L):
  """CLIP: <sot> words <eot> 0-padding (eot = V-1, the highest id); SigLIP: words </s> then
  </s> padding (id 1)."""
  ids = np.zeros((n, length), np.int64)
  for i in range(n):
    k = int(rng.integers(2, length - 1))
    if family == "clip":
      ids[i, 0], ids[i, 1:k] = V - 2, rng.integers(1, V - 2, k - 1)
      ids[i, k] = V - 1
    else:
      ids[i, :k], ids[i, k:] = rng.integers(3, V, k), 1
  return ids


def outputs_hf(model, px, ids):
  with torch.no_grad():
    out = model(input_ids=ids, pixel_values=px)
    img = model.get_image_features(pixel_values=px)
    txt = model.get_text_features(input_ids=ids)
  pick = lambda x: x if torch.is_tensor(x) else x.pooler_output
  return pick(img), pick(txt), out.logits_per_image


def main(layout, out):
  os.makedirs(out, exist_ok=True)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  family = "siglip" if "siglip" in layout else "clip"
  img_size = 224 if layout == "open_clip_vit_b16" else IMG
  images = rng.normal(size=(2, img_size, img_size, 3)).astype(np.float32)
  px = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  if layout == "open_clip_vit_b16":
    import open_clip
    model = perturb(open_clip.create_model("ViT-B-16"), seed=1)
    word_tokenizer(os.path.join(out, "tokenizer.json"),
                   {0: "<pad>", 49406: "<|startoftext|>", 49407: "<|endoftext|>"}, 49408)
    ids = np.zeros((3, 77), np.int64)
    for i, k in enumerate((5, 20, 76)):
      ids[i, 0], ids[i, 1:k], ids[i, k] = 49406, rng.integers(1, 49406, k - 1), 49407
  else:
    ids = text_ids(rng, 3, family)
  t_ids = torch.from_numpy(ids)
  if layout.startswith("hf_"):
    import transformers as tf
    if family == "clip":
      cfg = tf.CLIPConfig(
          text_config=dict(vocab_size=V, hidden_size=24, intermediate_size=48,
                           num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=L,
                           bos_token_id=V - 2, eos_token_id=V - 1, pad_token_id=0),
          vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                             num_hidden_layers=2, image_size=IMG, patch_size=PATCH),
          projection_dim=16)
      model = perturb(tf.CLIPModel(cfg))
      word_tokenizer(os.path.join(out, "tokenizer.json"),
                     {0: "<pad>", V - 2: "<|startoftext|>", V - 1: "<|endoftext|>"})
    else:
      cfg = tf.SiglipConfig(
          text_config=dict(vocab_size=V, hidden_size=32, intermediate_size=64,
                           num_attention_heads=2, num_hidden_layers=2,
                           max_position_embeddings=L),
          vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                             num_hidden_layers=2, image_size=IMG, patch_size=PATCH))
      model = perturb(tf.SiglipModel(cfg))
      word_tokenizer(os.path.join(out, "tokenizer.json"), {0: "<pad>", 1: "</s>", 2: "<unk>"})
    model.save_pretrained(out)  # config.json + model.safetensors
    img, txt, logits = outputs_hf(model, px, t_ids)
    n_params = sum(p.numel() for p in model.parameters())
  else:
    import open_clip
    if layout == "open_clip_clip":
      mcfg = {"embed_dim": 16, "quick_gelu": False,
              "vision_cfg": {"image_size": IMG, "layers": 2, "width": 32, "patch_size": PATCH,
                             "head_width": 16},
              "text_cfg": {"context_length": L, "vocab_size": V, "width": 24, "heads": 2,
                           "layers": 2}}
      model = perturb(open_clip.model.CLIP(embed_dim=16, vision_cfg=mcfg["vision_cfg"],
                                           text_cfg=mcfg["text_cfg"]))
    elif layout == "open_clip_siglip":
      from timm.models import register_model
      from timm.models.vision_transformer import _create_vision_transformer

      @register_model
      def vit_tinytest_siglip(pretrained=False, **kw):  # pylint: disable=unused-variable
        args = dict(patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, class_token=False,
                    global_pool="map", img_size=IMG)
        return _create_vision_transformer("vit_base_patch16_siglip_224", pretrained=False,
                                          **dict(args, **kw))
      text_cfg = {"context_length": L, "vocab_size": V, "width": 32, "heads": 2, "layers": 2,
                  "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                  "norm_kwargs": {"eps": 1e-6}}
      vision_cfg = {"image_size": IMG, "timm_model_name": "vit_tinytest_siglip",
                    "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}
      model = perturb(open_clip.model.CustomTextCLIP(
          embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg, init_logit_bias=-10.0))
      # the architecture, for mmjax: open_clip's JSON plus the tiny trunk's sizes
      mcfg = {"embed_dim": 32, "text_cfg": text_cfg,
              "vision_cfg": dict(vision_cfg, patch_size=PATCH, width=32, layers=2, heads=2,
                                 mlp_dim=128)}
    else:
      mcfg = None
    if mcfg is not None:
      with open(os.path.join(out, "model_config.json"), "w", encoding="utf-8") as f:
        json.dump(mcfg, f)
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out, "open_clip.safetensors"))
    if layout != "open_clip_vit_b16":  # the pickle path is tested on the small layouts
      torch.save(model.state_dict(), os.path.join(out, "open_clip.bin"))
    with torch.no_grad():
      img, txt = model.encode_image(px), model.encode_text(t_ids)
      zi = img / img.norm(dim=-1, keepdim=True)
      zt = txt / txt.norm(dim=-1, keepdim=True)
      logits = model.logit_scale.exp() * zi @ zt.T
      if getattr(model, "logit_bias", None) is not None:
        logits = logits + model.logit_bias
    n_params = sum(p.numel() for p in model.parameters())
  np.savez(os.path.join(out, "reference.npz"), images=images, ids=ids.astype(np.int32),
           image_embeds=img.numpy(), text_embeds=txt.numpy(), logits=logits.numpy(),
           n_params=np.int64(n_params))
  print(f"{layout}: {n_params} parameters -> {out}")
  return model


NAFLEX_GRIDS = ((2, 6), (5, 3), (3, 3))  # wider, taller, smaller than the 4 x 4 table


def siglip2_model():
  import transformers as tf
  cfg = tf.Siglip2Config(
      text_config=dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                       num_hidden_layers=2, max_position_embeddings=L, pad_token_id=0,
                       eos_token_id=1, bos_token_id=2),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_hidden_layers=2, patch_size=PATCH, num_patches=(IMG // PATCH) ** 2))
  return perturb(tf.Siglip2Model(cfg))


def siglip2_rows(images, n):
  """NHWC float images (one grid each) -> (pixel_values [B, n, p*p*3], pixel_attention_mask
  [B, n], spatial_shapes [B, 2]) as Siglip2ImageProcessor lays them out."""
  from transformers.models.siglip2 import image_processing_siglip2 as ip
  rows, masks, shapes = [], [], []
  for img in images:
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    r, m = ip.pad_along_first_dim(ip.convert_image_to_patches(chw, PATCH), n)
    rows.append(r)
    masks.append(m)
    shapes.append((img.shape[0] // PATCH, img.shape[1] // PATCH))
  return torch.stack(rows), torch.stack(masks), torch.tensor(shapes, dtype=torch.long)


def siglip2_outputs(model, rows, mask, shapes, ids):
  with torch.no_grad():
    out = model(input_ids=ids, pixel_values=rows, pixel_attention_mask=mask,
                spatial_shapes=shapes)
    img = model.get_image_features(pixel_values=rows, pixel_attention_mask=mask,
                                   spatial_shapes=shapes).pooler_output
    txt = model.get_text_features(input_ids=ids).pooler_output  # no attention_mask
  return img.numpy(), txt.numpy(), out.logits_per_image.numpy()


def siglip2(out):
  """See the module doc (layout hf_siglip2). Text: words <eos> then <pad> padding."""
  import torch.nn.functional as F
  os.makedirs(out, exist_ok=True)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  model = siglip2_model()
  model.save_pretrained(out)
  word_tokenizer(os.path.join(out, "tokenizer.json"),
                 {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"})
  ids = np.zeros((3, L), np.int64)
  for i, k in enumerate((3, 7, L - 1)):
    ids[i, :k], ids[i, k] = rng.integers(4, V, k), 1
  t_ids = torch.from_numpy(ids)
  n = (IMG // PATCH) ** 2
  squares = rng.normal(size=(2, IMG, IMG, 3)).astype(np.float32)
  img, txt, logits = siglip2_outputs(model, *siglip2_rows(squares, n), t_ids)
  naflex = [rng.normal(size=(h * PATCH, w * PATCH, 3)).astype(np.float32)
            for h, w in NAFLEX_GRIDS]
  rows, mask, shapes = siglip2_rows(naflex, n)
  n_img, n_txt, n_logits = siglip2_outputs(model, rows, mask, shapes, t_ids)
  g = IMG // PATCH
  table = model.vision_model.embeddings.position_embedding.weight.detach()
  table = table.reshape(g, g, -1).permute(2, 0, 1)[None]
  interp = {f"interp_{h}x{w}": F.interpolate(table, size=(h, w), mode="bilinear",
                                             align_corners=False, antialias=True)[0]
            .permute(1, 2, 0).numpy() for h, w in NAFLEX_GRIDS + ((8, 8), (1, 16))}
  n_params = sum(p.numel() for p in model.parameters())
  np.savez(os.path.join(out, "reference.npz"), images=squares, ids=ids.astype(np.int32),
           image_embeds=img, text_embeds=txt, logits=logits, n_params=np.int64(n_params),
           naflex_rows=rows.numpy(), naflex_mask=mask.numpy(),
           naflex_grids=shapes.numpy().astype(np.int32), naflex_image_embeds=n_img,
           naflex_text_embeds=n_txt, naflex_logits=n_logits, **interp)
  print(f"hf_siglip2: {n_params} parameters -> {out}")


CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def zero_shot(folder, images_dir, names_file, templates_file, out):
  """CLIP zero-shot predictions of the Hugging Face CLIP in `folder` on the PNGs of
  images_dir (sorted by name): prompts framed <sot> words <eot> 0-padding, class embedding =
  normalized mean of the normalized prompt embeddings, prediction = argmax cosine."""
  import transformers as tf
  from PIL import Image
  model = tf.CLIPModel.from_pretrained(folder).eval()
  tok = tf.PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
  length = model.config.text_config.max_position_embeddings
  names = open(names_file, encoding="utf-8").read().splitlines()
  templates = open(templates_file, encoding="utf-8").read().splitlines()
  def ids(text):
    words = tok(text.lower(), add_special_tokens=False)["input_ids"][:length - 2]
    row = [V - 2] + words + [V - 1]
    return row + [0] * (length - len(row))
  files = sorted(os.listdir(images_dir))
  px = np.stack([(np.asarray(Image.open(os.path.join(images_dir, f)).convert("RGB"),
                             np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD for f in files])
  with torch.no_grad():
    pick = lambda x: x if torch.is_tensor(x) else x.pooler_output
    img = pick(model.get_image_features(
        pixel_values=torch.from_numpy(px.transpose(0, 3, 1, 2).copy())))
    img = img / img.norm(dim=-1, keepdim=True)
    classes = []
    for n in names:
      t = pick(model.get_text_features(input_ids=torch.tensor([ids(tp.format(n))
                                                               for tp in templates])))
      t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
      classes.append(t / t.norm())
    pred = (img @ torch.stack(classes).T).argmax(-1).numpy()
  np.save(out, pred)
  print(f"zero-shot predictions of {len(files)} images -> {out}")


TEXTS = ("a photo of a cat.", "A Diagram of the Digit Seven!", "two dogs, playing  in the snow",
         "an ü-umlaut, naïve café", "x" * 300)


def clip_tokenizer(out):
  """CLIP's BPE (the vocabulary open_clip ships) as a Hugging Face tokenizer.json, and
  open_clip's own ids for TEXTS (context 77): the reference for mmjax's hf: backend."""
  import gzip
  import open_clip
  from open_clip.tokenizer import bytes_to_unicode, default_bpe
  os.makedirs(out, exist_ok=True)
  merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
  merges = [tuple(m.split()) for m in merges]
  base = list(bytes_to_unicode().values())
  vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({v: i for i, v in enumerate(vocab)}, f)
  with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  # The layout of Hugging Face's CLIP tokenizer.json: byte-level BPE with '</w>' word ends.
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  bpe = models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges,
                   end_of_word_suffix="</w>", unk_token="<|endoftext|>", fuse_unk=False)
  tok = Tokenizer(bpe)
  tok.normalizer = normalizers.Sequence([normalizers.NFC(),
                                         normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Lowercase()])
  pattern = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
             r"""[\p{N}]|[^\s\p{L}\p{N}]+""")
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
  tok.save(os.path.join(out, "tokenizer.json"))
  np.savez(os.path.join(out, "reference.npz"), ids=open_clip.tokenize(list(TEXTS)).numpy(),
           texts=np.array(TEXTS))
  print(f"CLIP BPE, {len(vocab)} ids -> {out}")


def photo(rng, h, w):
  """uint8 [h, w, 3]: smooth colour gradients, a few discs and noise."""
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
  img = np.stack([x, y, 1 - x * y], -1) * 200 + 20
  for _ in range(4):
    cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
    img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
  return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def write_images(folder):
  """Image files of several sizes and modes (model size IMG = 32): name -> path."""
  from PIL import Image
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(1)
  rgba = np.concatenate([photo(rng, 52, 40), np.linspace(0, 255, 52 * 40).reshape(52, 40, 1)
                         .astype(np.uint8)], -1)
  palette_alpha = Image.fromarray(photo(rng, 33, 39)).quantize(16)
  palette_alpha.info["transparency"] = 0
  gray16 = (np.linspace(0, 400, 31 * 57).reshape(31, 57) + rng.normal(0, 30, (31, 57)))
  images = {
      "rgb_wide.png": Image.fromarray(photo(rng, 45, 61)),      # larger, non-square
      "rgb_square.png": Image.fromarray(photo(rng, 32, 32)),    # the model's size
      "rgb_small.jpg": Image.fromarray(photo(rng, 27, 20)),     # smaller: upsampled
      "gray.png": Image.fromarray(photo(rng, 38, 50)).convert("L"),
      "rgba.png": Image.fromarray(rgba, "RGBA"),               # alpha varies
      "palette.png": Image.fromarray(photo(rng, 35, 47)).quantize(64),
      "palette_alpha.png": palette_alpha,                        # P with a transparent index
      "gray16.png": Image.fromarray(np.clip(gray16, 0, 65535).astype(np.uint16)),
      "cmyk.jpg": Image.fromarray(photo(rng, 41, 33)).convert("CMYK"),
  }
  paths = {}
  for name, im in images.items():
    paths[name] = os.path.join(folder, name)
    im.save(paths[name], **({"transparency": 0} if name == "palette_alpha.png" else {}))
  return paths


INPUT_LAYOUTS = ("hf_clip", "hf_siglip", "open_clip_clip", "open_clip_siglip")
STRINGS = ("w5 w10", "w11  w12   w13", "w7", "",
           " ".join(f"w{i}" for i in range(20, 40)),  # longer than the context: truncated
           "W5, W10!  w11_w12.")  # cleaning: lowercase, punctuation, '_' (SigLIP)


def text_tokenizer(layout, folder):
  """The family's tokenizer over the layout's word vocabulary, saved in folder: CLIP frames
  <|startoftext|> words <|endoftext|> (pads with <|endoftext|>), SigLIP words </s> (pads with
  </s>); truncation keeps the end token."""
  import transformers as tf
  from tokenizers import Tokenizer, normalizers, processors
  family = "siglip" if "siglip" in layout else "clip"
  specials = ({0: "<pad>", V - 2: "<|startoftext|>", V - 1: "<|endoftext|>"} if family == "clip"
              else {0: "<pad>", 1: "</s>", 2: "<unk>"})
  os.makedirs(folder, exist_ok=True)
  word_tokenizer(os.path.join(folder, "words.json"), specials)
  tok = Tokenizer.from_file(os.path.join(folder, "words.json"))
  if family == "clip":  # CLIP's tokenizer.json lowercases; SigLIP's leaves cleaning to callers
    tok.normalizer = normalizers.Lowercase()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", V - 2), ("<|endoftext|>", V - 1)])
    kw = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
  else:
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    kw = dict(eos_token="</s>", pad_token="</s>", unk_token="<unk>")
  fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=L, **kw)
  fast.save_pretrained(folder)
  return fast


def inputs(out):
  """See the module doc (mode `inputs`)."""
  import transformers as tf
  from PIL import Image
  paths = write_images(os.path.join(out, "images"))
  names = sorted(paths)
  for layout in INPUT_LAYOUTS:
    folder = os.path.join(out, layout)
    model = main(layout, folder)
    siglip = "siglip" in layout
    tok_dir = os.path.join(folder, "text_tokenizer")
    fast = text_tokenizer(layout, tok_dir)
    pick = lambda x: x if torch.is_tensor(x) else x.pooler_output
    with torch.no_grad():
      if layout.startswith("hf_"):
        proc = (tf.SiglipImageProcessor(size={"height": IMG, "width": IMG}) if siglip else
                tf.CLIPImageProcessor(size={"shortest_edge": IMG},
                                      crop_size={"height": IMG, "width": IMG}))
        proc.save_pretrained(folder)  # preprocessor_config.json
        px = torch.cat([proc(images=Image.open(paths[n]), return_tensors="pt")["pixel_values"]
                        for n in names])
        img = pick(model.get_image_features(pixel_values=px))
        enc = fast(list(STRINGS), padding="max_length", truncation=True, max_length=L,
                   return_tensors="pt")
        ids = enc["input_ids"]
        txt = pick(model.get_text_features(
            input_ids=ids, **({} if siglip else {"attention_mask": enc["attention_mask"]})))
      else:
        import open_clip
        pre = (open_clip.image_transform(IMG, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3,
                                         resize_mode="squash") if siglip else
               open_clip.image_transform(IMG, is_train=False))
        px = torch.stack([pre(Image.open(paths[n])) for n in names])
        img = model.encode_image(px)
        if siglip:
          ids = open_clip.tokenizer.HFTokenizer(tok_dir, context_length=L,
                                                clean="canonicalize")(list(STRINGS))
        else:  # open_clip.tokenize's framing: <sot> words <eot> 0-padding, <eot> kept
          ids = torch.zeros((len(STRINGS), L), dtype=torch.long)
          clean = open_clip.tokenizer.get_clean_fn("lower")
          for i, t in enumerate(STRINGS):
            row = [V - 2] + fast(clean(t), add_special_tokens=False)["input_ids"] + [V - 1]
            row = row[:L - 1] + [V - 1] if len(row) > L else row
            ids[i, :len(row)] = torch.tensor(row)
        txt = model.encode_text(ids)
    np.savez(os.path.join(folder, "inputs.npz"), files=np.array(names),
             pixels=px.numpy().transpose(0, 2, 3, 1), image_embeds=img.numpy(),
             texts=np.array(STRINGS), ids=ids.numpy().astype(np.int32),
             text_embeds=txt.numpy())
    print(f"{layout}: features of {len(names)} images and {len(STRINGS)} strings")


def canonicalize():
  """See the module doc (mode `canonicalize`)."""
  import string
  import types
  from open_clip.tokenizer import canonicalize_text
  # canonicalize_text is plain Python; the module imports sentencepiece, which this venv lacks
  sys.modules.setdefault("sentencepiece", types.ModuleType("sentencepiece"))
  from transformers.models.siglip.tokenization_siglip import SiglipTokenizer
  punct = str.maketrans("", "", string.punctuation)
  hf = types.SimpleNamespace(do_lower_case=True, remove_punctuation=lambda t: t.translate(punct))
  xs = json.loads(sys.stdin.read())
  print(json.dumps([[canonicalize_text(x) for x in xs],
                    [SiglipTokenizer.canonicalize_text(hf, x) for x in xs]]))


if __name__ == "__main__":
  if sys.argv[1] == "canonicalize":
    canonicalize()
  elif sys.argv[1] == "inputs":
    inputs(sys.argv[2])
  elif sys.argv[1] == "clip_tokenizer":
    clip_tokenizer(sys.argv[2])
  elif sys.argv[1] == "zeroshot":
    zero_shot(*sys.argv[2:7])
  elif sys.argv[1] == "hf_siglip2":
    siglip2(sys.argv[2])
  else:
    main(*sys.argv[1:3])
