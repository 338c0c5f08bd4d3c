"""COCO image-text retrieval (Karpathy 5k test split, 25k captions), an eval config.

  python eval.py --workdir=RUN --eval_config=configs/coco_retrieval.py:tfds=~/tensorflow_datasets
  python eval.py --workdir=RUN --eval_config=configs/coco_retrieval.py:jsonl=coco_test.jsonl

tfds=DIR: TFDS `coco_captions/2014:1.1.0` (the Karpathy splits) prepared as ArrayRecord in DIR,
split 'test', features image and captions/text (the explicit version makes TFDS read the
prepared files, so no TensorFlow is needed). jsonl=FILE: a manifest with caption lists, e.g. from
`python -m mmjax.data.standard karpathy --json=dataset_coco.json --images=COCO_DIR
--split=test --out=coco_test.jsonl`. Up to 7 captions per image (the most any image has);
R@k by the COCO protocol (mmjax/evaluators/retrieval.py). wds=SHARDS: that manifest written as
webdataset shards (python -m mmjax.data.write --from=jsonl --to=wds).
"""
import ml_collections

from mmjax.data import standard


def get_config(arg: str = ""):
  kind, path = standard.source_arg(arg, ("tfds", "jsonl", "wds"), "coco_retrieval")
  c = ml_collections.ConfigDict()
  c.data = standard.eval_source(kind, path, tfds={
      "tfds_name": "coco_captions/2014:1.1.0", "tfds_split_eval": "test",
      "feature_keys": {"image": "image", "text": "captions/text"}})
  c.data.max_captions = 7
  c.eval = {"evaluators": ("retrieval",), "num_examples": 5000}
  return c
