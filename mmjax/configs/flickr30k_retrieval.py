"""Flickr30k image-text retrieval (Karpathy 1k test split, 5 captions each), an eval config.

  python -m mmjax.data.standard karpathy --json=dataset_flickr30k.json \
      --images=flickr30k-images --split=test --out=flickr30k_test.jsonl
  python eval.py --workdir=RUN \
      --eval_config=configs/flickr30k_retrieval.py:jsonl=flickr30k_test.jsonl

jsonl=FILE: a manifest with caption lists ({"image": ..., "caption": [5 sentences]}).
R@k by the Flickr30k / COCO protocol (mmjax/evaluators/retrieval.py).
"""
import ml_collections

from mmjax.data import standard


def get_config(arg: str = ""):
  kind, path = standard.source_arg(arg, ("jsonl", "wds"), "flickr30k_retrieval")
  c = ml_collections.ConfigDict()
  c.data = standard.eval_source(kind, path)
  c.data.max_captions = 5
  c.eval = {"evaluators": ("retrieval",), "num_examples": 1000}
  return c
