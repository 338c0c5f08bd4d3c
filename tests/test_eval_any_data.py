"""Zero-shot on any labelled source: a checkpoint trained on the built-in set, evaluated on the
same test images exported as a JSONL manifest (names from data.class_names) and as a TFDS
dataset (names from its ClassLabel); the 'skipped' note; the linear probe on that model;
eval.py --config.KEY=VALUE."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import config_lib, configure, evaluate, restore, trainer
from mmjax.data import builtin, prompts, sources
from mmjax.evaluators import zero_shot
from mmjax.evaluators.common import Evaluated
from mmjax import sharding
from tests import tiny_config as tiny
from tests.helpers import apply_overrides, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 64  # exported test examples (= tiny_config's data.test_examples)
NAMES = builtin.class_names("image_text")
TEMPLATES = builtin.prompt_templates("image_text")
MEAN, STD = builtin.PIXEL_STATS["image_text"]
# External images are normalized with data.image_mean / image_std: use the built-in statistics
PIXELS = {"data.image_mean": f"{MEAN},{MEAN},{MEAN}", "data.image_std": f"{STD},{STD},{STD}"}
DEV = jax.devices()[:1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny dual encoder, 30 contrastive steps on the built-in image-text set."""
  d = str(tmp_path_factory.mktemp("run"))
  trainer.train(tiny.dual_encoder_30_steps(), d, log_to_stdout=False, devices=DEV)
  return d


@pytest.fixture(scope="module")
def base(workdir):
  """Zero-shot on the built-in test set, the reference for the exported copies."""
  res = evaluate.run(workdir, evaluators=["zero_shot"], devices=DEV)
  assert res["zero_shot/num_classes"] == 18 and res["zero_shot/examples"] == N
  assert res["zero_shot/accuracy"] >= 3 * res["zero_shot/chance"], res  # trained: above chance
  return res


def _examples():
  """The built-in test examples as uint8 images [16, 16, 3] with their labels."""
  src = builtin.BuiltinSource("image_text", "test", size=N, image_size=16)
  for i in range(N):
    ex = src[i]
    img = np.clip(np.round((ex["image"] * STD + MEAN) * 255), 0, 255).astype(np.uint8)
    yield i, img, int(ex["label"])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  d = tmp_path_factory.mktemp("jsonl")
  (d / "img").mkdir()
  rows = []
  for i, img, label in _examples():
    Image.fromarray(img).save(d / "img" / f"{i}.png")
    rows.append({"image": f"img/{i}.png", "caption": NAMES[label], "label": label})
  (d / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  (d / "names.txt").write_text("\n".join(NAMES) + "\n")
  (d / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
  return d


def _jsonl(manifest, **kw):
  return {"data.source": "jsonl", "data.jsonl_path": str(manifest / "m.jsonl"), **PIXELS, **kw}


def test_zero_shot_on_jsonl_with_class_names(workdir, base, manifest):
  over = _jsonl(manifest, **{"data.class_names": str(manifest / "names.txt"),
                             "data.prompt_templates": list(TEMPLATES)})
  config, model, params, mesh, _ = evaluate.restore(workdir, overrides=over, devices=DEV)
  ev = Evaluated(config, model, params, mesh, sharding.batch_sharding(mesh))
  batches = restore.eval_batches(config, 32, N, mesh.size)
  names, templates, why = evaluate.zero_shot_classes(config.data)
  assert names == tuple(NAMES) and templates == tuple(TEMPLATES) and not why
  res = zero_shot.evaluate(ev, batches, evaluate.class_prompts(config, names, templates))
  assert res["zero_shot/num_classes"] == 18 and res["zero_shot/examples"] == N
  # the same images (8-bit rounded) and prompts: the built-in set's accuracy, within 2 images
  assert abs(res["zero_shot/accuracy"] - base["zero_shot/accuracy"]) <= 2 / N, (res, base)
  # the names are what classifies: each class named with the next colour, it collapses
  rotated = names[3:] + names[:3]
  wrong = zero_shot.evaluate(ev, batches, evaluate.class_prompts(config, rotated, templates))
  assert wrong["zero_shot/accuracy"] < base["zero_shot/accuracy"] / 2, (wrong, base)


def test_missing_names_are_reported_and_labels_checked(workdir, manifest):
  res = evaluate.run(workdir, evaluators=["zero_shot"], overrides=_jsonl(manifest), devices=DEV)
  assert "zero_shot/accuracy" not in res
  why = res["zero_shot/skipped"]
  assert "JSONL" in why and "data.class_names" in why and "\n" not in why
  with pytest.raises(ValueError) as e:
    evaluate.run(workdir, evaluators=["zero_shot"],
                 overrides=_jsonl(manifest, **{"data.class_names": "red square,red circle"}),
                 devices=DEV)
  msg = str(e.value)
  assert "\n" not in msg and "out of range of the 2 class names" in msg, msg


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  tfds.disable_progress_bar()

  class MmjaxBuiltinTest(tfds.core.GeneratorBasedBuilder):
    """The built-in test images with a ClassLabel that carries the class names."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(16, 16, 3)), "caption": tfds.features.Text(),
          "label": tfds.features.ClassLabel(names=NAMES)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"test": self._generate_examples(), "train": self._generate_examples()}

    def _generate_examples(self):
      for i, img, label in _examples():
        yield i, {"image": Image.fromarray(img), "caption": NAMES[label], "label": label}

  d = str(tmp_path_factory.mktemp("tfds"))
  MmjaxBuiltinTest(data_dir=d, file_format="array_record").download_and_prepare()
  return d


def test_zero_shot_on_tfds_takes_classlabel_names(workdir, base, tfds_dir):
  tfds_keys = {"data.source": "tfds", "data.tfds_name": "mmjax_builtin_test",
               "data.tfds_data_dir": tfds_dir}
  cfg = configure.resolve(apply_overrides(tiny.get_config(), tfds_keys)).data
  assert sources.source_class_names(cfg) == tuple(NAMES)
  names, templates, _ = evaluate.zero_shot_classes(cfg)
  assert names == tuple(NAMES) and len(templates) == 80  # external default: openai_imagenet
  over = {**tfds_keys, **PIXELS, "data.prompt_templates": list(TEMPLATES)}
  res = evaluate.run(workdir, evaluators=["zero_shot"], overrides=over, devices=DEV)
  assert res["zero_shot/num_classes"] == 18 and res["zero_shot/examples"] == N, res
  assert abs(res["zero_shot/accuracy"] - base["zero_shot/accuracy"]) <= 2 / N, (res, base)


def test_linear_probe_on_the_trained_model(workdir):
  # the saved config has no probe keys: string overrides take the EvalConfig defaults' types
  res = evaluate.run(workdir, evaluators=["linear_probe"], devices=DEV, overrides={
      "eval.probe_train_examples": "300", "eval.probe_l2": "1e-4,1e-2"})
  assert res["linear_probe/train_examples"] == 300 and res["linear_probe/test_examples"] == N
  assert res["linear_probe/num_classes"] == 18 and res["linear_probe/l2"] in (1e-4, 1e-2)
  assert res["linear_probe/accuracy"] >= 3 * res["linear_probe/chance"], res
  assert res["linear_probe/method"] == "logistic regression on image embeddings"


def _eval_py(*args):
  env = subprocess_env(devices=1)
  return subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True)


def test_eval_py_evaluates_a_checkpoint_on_another_dataset(workdir, base, manifest, tmp_path):
  r = _eval_py(f"--workdir={workdir}", f"--out={tmp_path}", "--evaluators=zero_shot",
               "--config.data.source=jsonl", f"--config.data.jsonl_path={manifest / 'm.jsonl'}",
               f"--config.data.class_names={','.join(NAMES)}",
               f"--config.data.prompt_templates={manifest / 'templates.txt'}",
               *(f"--config.{k}={v}" for k, v in PIXELS.items()),
               "--config.eval.batch_size=16", "--config.eval.num_examples", "48")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))
  assert res["zero_shot/num_classes"] == 18 and res["zero_shot/examples"] == 48, res
  assert res["zero_shot/accuracy"] >= 3 * res["zero_shot/chance"], res


@pytest.mark.parametrize("arg,needle", [
    ("--config.data.clas_names=a,b", "unknown config key data.clas_names"),
    ("--config.eval.batch_size=many", "--config.eval.batch_size='many' is not an integer")])
def test_eval_py_bad_override_is_one_line(workdir, arg, needle):
  r = _eval_py(f"--workdir={workdir}", arg)
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: ") and needle in line, line


def test_class_name_and_template_forms(tmp_path):
  names = tmp_path / "names.txt"
  names.write_text("cat\n\ndog \n")
  assert prompts.parse_class_names(str(names)) == ("cat", "dog")
  assert prompts.parse_class_names("cat, dog,bird") == ("cat", "dog", "bird")
  assert prompts.parse_class_names(["cat", "dog"]) == ("cat", "dog")
  assert prompts.parse_class_names(()) is None and prompts.parse_templates("") is None
  assert prompts.parse_templates("simple") == ("a photo of a {}.",)
  assert len(prompts.parse_templates("openai_imagenet")) == 80
  assert prompts.OPENAI_IMAGENET[0] == "a bad photo of a {}."
  assert prompts.OPENAI_IMAGENET[-1] == "a tattoo of the {}."
  assert prompts.parse_templates("itap of a {}") == ("itap of a {}",)
  for bad, needle in ((["a {} {}"], "exactly one '{}'"), ("no braces", "neither a template set"),
                      (["a", "a"], None)):
    if needle is None:  # repeated class names
      with pytest.raises(ValueError, match="repeats"):
        prompts.parse_class_names(bad)
      continue
    with pytest.raises(ValueError, match=needle):
      prompts.parse_templates(bad)
  with pytest.raises(config_lib.ConfigError, match="data.class_names file not found"):
    configure.resolve(apply_overrides(tiny.get_config(), {"data.class_names": "none.txt"}))
  with pytest.raises(config_lib.ConfigError, match="data.prompt_templates"):
    configure.resolve(apply_overrides(tiny.get_config(), {"data.prompt_templates": ["x"]}))
