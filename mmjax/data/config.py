"""The data config (`config.data`): defaults, merging, validation with one-line errors."""
from __future__ import annotations

import os

import ml_collections

from mmjax.data import prompts

SOURCES = ("builtin", "tfds", "jsonl", "folder", "wds", "array_record")
FEATURE_NAMES = ("image", "video", "audio", "text", "label")
ON_ERROR = ("stop", "skip")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # pixel normalization for external images
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _any(default):
  """A field that takes a list or a string (a file path) in configs and on the command line."""
  return ml_collections.FieldReference(default, field_type=object)


def _image_preprocessing(c: ml_collections.ConfigDict) -> None:
  """The keys of how an external image becomes the model's input (part of get_config)."""
  # external pixel normalization (the built-in set uses its own measured statistics)
  c.image_mean = CLIP_MEAN
  c.image_std = CLIP_STD
  # How an external image becomes image_size x image_size (mmjax/data/decode.py resize_image):
  # pil: PIL bicubic in the image's own mode, shorter side, centre crop, then RGB (open_clip);
  # torchvision: RGB, antialiased bicubic on uint8, shorter side, centre crop (HF); *_squash:
  # to S x S (SigLIP). jpeg_draft: big JPEGs decode reduced first (PIL draft). Set by convert.
  c.image_resize = "pil"           # pil | pil_squash | torchvision | torchvision_squash
  c.jpeg_draft = True
  # Native aspect (NaFlex / NaViT): max_patches = N > 0 resizes each image keeping its aspect
  # to the best patch grid (decode.native_grid) of at most N patches of patch_size (0: the
  # image modality's patch, filled in by mmjax.configure) and feeds the patches ('image'
  # [N, p*p*3], zero rows after the image's own) with 'image_patch_grid' (gh, gw); no square
  # resize, no crop. The built-in scenes keep their data.image_size grid. 0: square images.
  # min_patches > 0 (training, external images): each example's budget is drawn uniformly
  # from [min_patches, max_patches] (NaViT), its rows still padded to max_patches.
  c.max_patches = 0
  c.min_patches = 0
  c.patch_size = 0


def get_config() -> ml_collections.ConfigDict:
  """Defaults for every data key (a train config's `data` may set any subset)."""
  c = ml_collections.ConfigDict()
  c.source = "builtin"             # builtin | tfds | jsonl | folder | wds | array_record
  c.task = "image_text"            # builtin: image_text | video_text | audio_text | audio_video
  # shapes
  c.image_size = 32                # image / video frames: S x S (external images: resize + crop)
  c.num_frames = 8                 # video frames T
  c.audio_frames = 64              # spectrogram time frames (10 ms hop)
  c.mel_bins = 32
  c.sample_rate = 16_000           # built-in synthesis rate; mel bins span 20 Hz..sample_rate/2
  c.text_len = 32
  c.tokenizer = "bytes"            # bytes | sentencepiece:/path | hf:/path/tokenizer.json
  # Framing (mmjax/data/text.py): role -> token for cls (start), sep (end), pad, mask; a token
  # string, an int id, or '' for none (cls, sep, mask); a role left out is the tokenizer's own.
  # CLIP: {'cls': '<|startoftext|>', 'sep': '<|endoftext|>', 'pad': 0} (HF: pad the end token)
  # with lowercase=True; SigLIP: {'cls': ''} (its model ends with '</s>', pads with <pad>).
  # On the command line: --config.data.tokenizer_specials="{'cls': '', 'pad': 0}".
  c.tokenizer_specials = ml_collections.ConfigDict()
  c.lowercase = False              # lowercase text before tokenizing (CLIP, SigLIP)
  # SigLIP's cleaning after lowercase: punctuation dropped, whitespace collapsed (text.py)
  c.canonicalize = ""              # '' | big_vision ('_' -> ' ' first) | hf ('_' dropped)
  # built-in set
  c.num_hard_negatives = 3         # K captions differing in exactly one binding
  c.max_objects = 3                # image_text: 1..max_objects shapes per image; region slots
  c.train_examples = 50_000
  c.test_examples = 1_000
  c.builtin_seed = 0               # generation seed (the shuffle seed is make_dataset's seed)
  c.include_caption = False        # add raw 'caption' strings (not for jitted steps)
  # image_text: each object's box, own caption and the pixel class map (data/builtin.py;
  # the LocCa objective and the referring / grounded-caption / dense-probe evaluators);
  # JSONL / webdataset / ArrayRecord: each example's "regions" (boxes and captions)
  c.regions = False
  # Several captions per example (a JSONL list, a TFDS Sequence such as captions/text, a
  # webdataset json list). 1: the first caption only. C > 1: up to C kept; training samples
  # one per example per epoch (seeded by position), evaluation gets 'texts' [C, L] and
  # 'num_captions' (retrieval then scores every caption, COCO / Flickr30k protocol).
  c.max_captions = 1
  # TFDS (ArrayRecord, prepared in tfds_data_dir; never downloaded)
  c.tfds_name = ""                 # e.g. "coco_captions/2017" or "my_set:1.0.0"
  c.tfds_data_dir = ""
  c.tfds_split_train = "train"
  c.tfds_split_eval = "test"
  c.feature_keys = ml_collections.ConfigDict(  # output name -> TFDS feature path
      {"image": "image", "text": "caption", "label": "label"})
  # JSONL manifest (paths relative to the manifest's folder)
  c.jsonl_path = ""
  c.jsonl_eval_path = ""           # '' = use jsonl_path for evaluation too
  # image folder root/<class>/<image> (ImageNet's layout): label = class folder, sorted
  c.folder_path = ""
  c.folder_eval_path = ""          # '' = use folder_path for evaluation too
  # sharded archives (mmjax/data/shards.py; write them with python -m mmjax.data.write):
  # a brace pattern "dir/shard-{000000..000099}.tar", a list of files, or a folder
  c.wds_shards = _any("")          # webdataset tar shards
  c.wds_eval_shards = _any("")     # '' = use wds_shards for evaluation too
  c.array_record_paths = _any("")  # ArrayRecord shards of msgpack member maps
  c.array_record_eval_paths = _any("")
  c.shard_assign = "examples"      # examples: same stream as a manifest, any process count |
                                   # shards: process p reads only shards p, p+P, ... (training)
  c.member_exts = ml_collections.ConfigDict()  # output -> 'ext,ext' (shards.DEFAULT_EXTS)
  _image_preprocessing(c)
  # zero-shot classes of any labelled source (mmjax/data/prompts.py). () = the source's own:
  # the built-in set's names and templates, a TFDS ClassLabel's names (a JSONL manifest has
  # none); external sources' templates default to openai_imagenet.
  c.class_names = _any(())         # list | text file (one per line) | 'cat,dog,bird'
  c.prompt_templates = _any(())    # list of '{}' strings | openai_imagenet | simple | text file
  # loading
  c.num_workers = 0                # >0: grain multiprocess prefetch
  c.read_threads = 2               # grain ReadOptions.num_threads per process
  c.prefetch_batches = 4           # grain ReadOptions.prefetch_buffer_size (in batches)
  # bad examples (tfds / jsonl: unreadable file, JSON line or label): 'stop' ends the run
  # naming it; 'skip' drops, counts (data/skipped in metrics.jsonl) and logs it, and stops
  # once more than max_skip_fraction of the examples read (after 100) were bad
  c.on_error = "stop"              # stop | skip
  c.max_skip_fraction = 0.01
  return c


def _fail(msg: str, exc=ValueError):
  raise exc(msg.replace("\n", " "))


def resolve(data_cfg=None) -> ml_collections.ConfigDict:
  """Defaults overlaid with `data_cfg` (a ConfigDict or dict), then validated."""
  cfg = get_config()
  if data_cfg is not None:
    items = data_cfg.items() if hasattr(data_cfg, "items") else dict(data_cfg).items()
    for k, v in items:
      if k not in cfg:
        _fail(f"unknown data config key data.{k}; known keys: {', '.join(sorted(cfg.keys()))}")
      if k in ("feature_keys", "tokenizer_specials", "member_exts"):
        cfg[k] = ml_collections.ConfigDict(dict(v or {}))
      else:
        with cfg.ignore_type():
          cfg[k] = v
  validate(cfg)
  return cfg


def validate(cfg) -> None:
  """Raises a one-line ValueError / FileNotFoundError naming the problem and the fix."""
  if cfg.source not in SOURCES:
    _fail(f"unknown data.source {cfg.source!r}; use one of {', '.join(SOURCES)}")
  for key in ("image_size", "num_frames", "audio_frames", "mel_bins", "text_len", "sample_rate"):
    if int(cfg[key]) < 1:
      _fail(f"data.{key}={cfg[key]} must be a positive integer")
  if cfg.text_len < 2:
    _fail(f"data.text_len={cfg.text_len} leaves no room for [CLS] and [SEP]; use >= 2")
  if int(cfg.max_captions) < 1:
    _fail(f"data.max_captions={cfg.max_captions} must be a positive integer (1: one caption)")
  if int(cfg.max_captions) > 1 and cfg.source == "builtin":
    _fail("data.max_captions > 1 needs an external source with caption lists (tfds, jsonl, "
          "...); the built-in set has one caption per example: use data.max_captions=1")
  from mmjax.data import text  # pylint: disable=g-import-not-at-top
  text.check_specials(cfg.tokenizer_specials)
  text.check_canonicalize(cfg.canonicalize)
  if cfg.source == "builtin":
    from mmjax.data import builtin  # pylint: disable=g-import-not-at-top
    if cfg.task not in builtin.TASKS:
      _fail(f"unknown data.task {cfg.task!r} for the built-in source; use one of "
            f"{', '.join(builtin.TASKS)}")
  elif cfg.source == "tfds":
    if not cfg.tfds_name:
      _fail("data.source='tfds' needs data.tfds_name (e.g. 'coco_captions'); set it")
    if not cfg.tfds_data_dir:
      _fail("data.source='tfds' needs data.tfds_data_dir, the folder the dataset was prepared in")
    if not os.path.isdir(os.path.expanduser(cfg.tfds_data_dir)):
      _fail(f"TFDS data_dir not found: {cfg.tfds_data_dir}; prepare the dataset there "
            "(tfds build --file_format=array_record) or fix data.tfds_data_dir", FileNotFoundError)
    bad = [k for k in cfg.feature_keys if k not in FEATURE_NAMES]
    if bad:
      _fail(f"data.feature_keys has unknown output name(s) {bad}; use {', '.join(FEATURE_NAMES)}")
  elif cfg.source == "jsonl":
    if not cfg.jsonl_path:
      _fail("data.source='jsonl' needs data.jsonl_path, a manifest with one JSON object per line")
    for key in ("jsonl_path", "jsonl_eval_path"):
      p = cfg[key]
      if p and not os.path.isfile(os.path.expanduser(p)):
        _fail(f"JSONL manifest not found: {p}; fix data.{key}", FileNotFoundError)
  elif cfg.source == "folder":
    for key in ("folder_path", "folder_eval_path"):
      p = cfg[key]
      if key == "folder_path" and not p:
        _fail("data.source='folder' needs data.folder_path, a folder of root/<class>/<image>")
      if p and not os.path.isdir(os.path.expanduser(p)):
        _fail(f"image folder not found: {p}; fix data.{key}", FileNotFoundError)
  elif cfg.source in ("wds", "array_record"):
    key = "wds_shards" if cfg.source == "wds" else "array_record_paths"
    if not cfg[key]:
      _fail(f"data.source={cfg.source!r} needs data.{key}, e.g. "
            f"'dir/shard-{{000000..000009}}.{'tar' if cfg.source == 'wds' else 'array_record'}'"
            " (write shards with python -m mmjax.data.write)")
  from mmjax.data import shards  # pylint: disable=g-import-not-at-top
  if cfg.shard_assign not in shards.SHARD_ASSIGN:
    _fail(f"unknown data.shard_assign {cfg.shard_assign!r}; use one of "
          f"{', '.join(shards.SHARD_ASSIGN)}")
  shards.parse_exts(cfg.member_exts)
  prompts.parse_class_names(cfg.class_names)
  prompts.parse_templates(cfg.prompt_templates)
  if len(cfg.image_mean) != 3 or len(cfg.image_std) != 3 or min(cfg.image_std) <= 0:
    _fail("data.image_mean / data.image_std must be 3 numbers each (std > 0)")
  from mmjax.data import decode  # pylint: disable=g-import-not-at-top
  if cfg.image_resize not in decode.IMAGE_RESIZE:
    _fail(f"unknown data.image_resize {cfg.image_resize!r}; use one of "
          f"{', '.join(decode.IMAGE_RESIZE)}")
  if int(cfg.max_patches) < 0 or int(cfg.patch_size) < 0:
    _fail(f"data.max_patches={cfg.max_patches} and data.patch_size={cfg.patch_size} must be "
          ">= 0 (max_patches 0: square images)")
  if int(cfg.min_patches) and not 0 < int(cfg.min_patches) <= int(cfg.max_patches):
    _fail(f"data.min_patches={cfg.min_patches} must be in [1, data.max_patches="
          f"{cfg.max_patches}] (0: every image gets max_patches)")
  if int(cfg.min_patches) and cfg.source == "builtin":
    _fail("data.min_patches draws a budget per external image; the built-in scenes are drawn "
          "at data.image_size: set data.min_patches=0 or an external source")
  if cfg.on_error not in ON_ERROR:
    _fail(f"unknown data.on_error {cfg.on_error!r}; use one of {', '.join(ON_ERROR)}")
  if not 0 <= float(cfg.max_skip_fraction) <= 1:
    _fail(f"data.max_skip_fraction={cfg.max_skip_fraction} must be in [0, 1]")
