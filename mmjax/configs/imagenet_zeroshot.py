"""ImageNet-1k zero-shot classification (50k validation images), an eval config.

  python eval.py --workdir=RUN --eval_config=configs/imagenet_zeroshot.py:tfds=~/tensorflow_datasets
  python eval.py --workdir=RUN --eval_config=configs/imagenet_zeroshot.py:folder=~/imagenet/val

tfds=DIR: TFDS `imagenet2012:5.1.0` prepared as ArrayRecord in DIR, split 'validation' (the
explicit version makes TFDS read the prepared files: no TensorFlow needed). folder=ROOT:
ROOT/<wnid>/<images>, label = the class folder's index in sorted order (the same order).
wds=SHARDS: that folder written as webdataset shards (python -m mmjax.data.write
--from=folder --to=wds: cls members hold the same labels).
Classes: CLIP's 1000 readable names (mmjax/data/imagenet_classes.py), prompts: its 80
templates (openai_imagenet).
"""
import ml_collections

from mmjax.data import standard
from mmjax.data.imagenet_classes import IMAGENET_CLASSES


def get_config(arg: str = ""):
  kind, path = standard.source_arg(arg, ("tfds", "folder", "wds"), "imagenet_zeroshot")
  c = ml_collections.ConfigDict()
  c.data = standard.eval_source(kind, path, tfds={
      "tfds_name": "imagenet2012:5.1.0", "tfds_split_eval": "validation",
      "feature_keys": {"image": "image", "label": "label"}})
  c.data.class_names = IMAGENET_CLASSES
  c.data.prompt_templates = "openai_imagenet"
  c.eval = {"evaluators": ("zero_shot",), "num_examples": 50_000}
  return c
