"""ImageNet zero-shot by name (configs/imagenet_zeroshot.py): the 1000 class names, and a tiny
fake imagenet2012 (TFDS layout: image, label ClassLabel of the 1000 wnids, file_name) and its
class-per-folder copy, scored through eval.py --eval_config on a tiny checkpoint whose labels
are built so the expected accuracy is known (4 of 6)."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mmjax import evaluate, restore, sharding
from mmjax.data import decode, prompts, standard
from mmjax.data.imagenet_classes import IMAGENET_CLASSES
from mmjax.evaluators.common import Evaluated
from tests.test_eval_any_data import _eval_py
from tests.test_multi_caption import DEV, init_checkpoint

tfds = pytest.importorskip("tensorflow_datasets")
CONFIG = "configs/imagenet_zeroshot.py"


def test_imagenet_class_names():
  assert len(IMAGENET_CLASSES) == 1000 and len(set(IMAGENET_CLASSES)) == 1000
  assert all(isinstance(n, str) and n == n.strip() and n for n in IMAGENET_CLASSES)
  assert prompts.parse_class_names(list(IMAGENET_CLASSES)) == IMAGENET_CLASSES  # no repeats
  # a few fixed points of the sorted-wnid order: n01440764 tench, n01443537 goldfish,
  # n02085620 Chihuahua (151), n04008634 projectile (744), n15075141 toilet paper (999)
  assert IMAGENET_CLASSES[:2] == ("tench", "goldfish") and IMAGENET_CLASSES[151] == "Chihuahua"
  assert IMAGENET_CLASSES[744] == "projectile" and IMAGENET_CLASSES[999] == "toilet paper"
  assert len(prompts.OPENAI_IMAGENET) == 80


def _wnids():
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common  # pylint: disable=all
  with open(imagenet_common.label_names_file(), encoding="utf-8") as f:
    names = [ln.strip() for ln in f if ln.strip()]
  assert len(names) == 1000 and names == sorted(names) and names[0] == "n01440764"
  return names


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(workdir, tfds data_dir, folder root, expected accuracy, class embeddings [1000, D])."""
  tmp = tmp_path_factory.mktemp("imagenet")
  workdir = init_checkpoint(str(tmp / "run"), **{"eval.batch_size": 250})
  # 40 noise JPEGs; the model's own top class for each (80 templates, CLIP's ensemble)
  rng = np.random.default_rng(0)
  (tmp / "jpg").mkdir()
  paths = []
  for i in range(40):
    paths.append(str(tmp / "jpg" / f"{i}.JPEG"))
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
        paths[-1], format="JPEG", quality=90)
  config, model, params, mesh, _ = evaluate.restore(workdir, devices=DEV)
  ev = Evaluated(config, model, params, mesh, sharding.batch_sharding(mesh))
  pre = decode.Preprocessor(config.data)
  za = ev.embeddings(ev.encode({"image": np.stack([pre(0, {"image": p})["image"]
                                                   for p in paths])}))["image"]
  ids = evaluate.class_prompts(config, IMAGENET_CLASSES, prompts.OPENAI_IMAGENET)
  zt = np.concatenate([ev.embeddings(ev.encode({"text": ids.reshape(-1, 12)[i:i + 2000]}))[
      "text"] for i in range(0, 80_000, 2000)]).reshape(1000, 80, -1)
  zc = zt.mean(1)
  zc /= np.linalg.norm(zc, axis=-1, keepdims=True)
  scores = za @ zc.T
  top2 = np.sort(scores, axis=1)[:, -2:]
  # no near-ties at the evaluator's 1e-4 resolution
  clear = [i for i in range(40) if top2[i, 1] - top2[i, 0] > 3e-4][:6]
  assert len(clear) == 6
  pred = scores.argmax(1)
  # 4 images labelled with the model's choice, 2 with another class: accuracy 4/6
  labels = {i: int(pred[i]) if k < 4 else int(pred[i] + 1) % 1000 for k, i in enumerate(clear)}
  wnids = _wnids()

  with tfds.core.registered.skip_registration():
    class Imagenet2012(tfds.core.GeneratorBasedBuilder):
      """imagenet2012's layout and version (5.1.0), a few images."""
      VERSION = tfds.core.Version("5.1.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=wnids),
            "file_name": tfds.features.Text()}))

      def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(clear[:2]),
                "validation": self._generate_examples(clear)}

      def _generate_examples(self, ids):
        for i in ids:
          yield i, {"image": paths[i], "label": labels[i],
                    "file_name": f"{wnids[labels[i]]}_{i}.JPEG"}

  data_dir = str(tmp / "tfds")
  Imagenet2012(data_dir=data_dir, file_format="array_record").download_and_prepare()
  root = tmp / "val"
  for w in wnids:
    (root / w).mkdir(parents=True)
  for i in clear:
    shutil.copy(paths[i], root / wnids[labels[i]] / f"{wnids[labels[i]]}_{i}.JPEG")
  return workdir, data_dir, str(root), 4 / 6, zc


def test_imagenet_zeroshot_on_tfds_through_eval_py(setup):
  workdir, data_dir, _, want, _ = setup
  assert os.path.isdir(os.path.join(data_dir, "imagenet2012", "5.1.0"))
  r = _eval_py(f"--workdir={workdir}", f"--eval_config={CONFIG}:tfds={data_dir}")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(os.path.join(workdir, "eval", "results.json")))
  assert res["zero_shot/num_classes"] == 1000 and res["zero_shot/examples"] == 6, res
  assert res["zero_shot/accuracy"] == pytest.approx(want), res
  assert set(k.split("/")[0] for k in res if "/" in k) == {"zero_shot"}  # only what it names


def test_imagenet_zeroshot_on_a_class_folder(setup):
  """The same overrides on root/<wnid>/<images>: the evaluator's inputs (classes, templates,
  images, labels = sorted folder index) score the expected accuracy with the class
  embeddings computed above (the evaluator itself is run on the TFDS copy)."""
  workdir, _, root, want, zc = setup
  from mmjax.data import write  # pylint: disable=import-outside-toplevel
  shards = write.write("folder", root, "wds", os.path.join(os.path.dirname(root), "in1k_wds"),
                       shard_size=4)["pattern"]  # the same folder as webdataset shards
  for kind, path in (("folder", root), ("wds", shards)):
    over = standard.eval_overrides(f"{CONFIG}:{kind}={path}")
    assert over["data.source"] == kind and over["eval.evaluators"] == ("zero_shot",)
    config, model, params, mesh, _ = evaluate.restore(workdir, overrides=over, devices=DEV)
    names, templates, _ = evaluate.zero_shot_classes(config.data)
    assert names == IMAGENET_CLASSES and templates == prompts.OPENAI_IMAGENET
    ev = Evaluated(config, model, params, mesh, sharding.batch_sharding(mesh))
    batches = restore.eval_batches(config, 250, config.eval.num_examples, mesh.size)
    labels = np.concatenate([b["label"] for b in batches])
    za = np.concatenate([ev.embeddings(ev.encode({"image": b["image"]}))["image"]
                         for b in batches])
    assert len(labels) == 6 and np.mean((za @ zc.T).argmax(1) == labels) == pytest.approx(want)


def test_eval_config_argument_errors_are_one_line():
  for spec, needle in ((CONFIG, "needs its copy on disk"),
                       (f"{CONFIG}:jsonl=x.jsonl", "tfds=PATH or folder=PATH"),
                       ("configs/nope.py", "eval config configs/nope.py not found")):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
      standard.eval_overrides(spec)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
