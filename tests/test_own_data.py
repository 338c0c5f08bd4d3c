"""The own-data path: `python -m mmjax.data.examples digits` writes a valid JSONL set (fixed
stratified split, templated captions, labels, class names) that configs/own_data.py trains on
and eval.py's zero-shot scores with data.class_names; the bench's variants all parse."""
import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip("sklearn")

from mmjax import config_lib, configure, evaluate, trainer  # noqa: E402
from mmjax.bench import own_data as bench  # noqa: E402
from mmjax.configs import own_data  # noqa: E402
from mmjax.data import examples, sources  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("digits"))
  assert examples.main(["digits", "--out", out]) == 0
  return out


def _rows(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_digits_manifest_is_valid_and_stratified(digits):
  names = examples.read_lines(os.path.join(digits, "class_names.txt"))
  templates = examples.read_lines(os.path.join(digits, "prompt_templates.txt"))
  assert names == list(examples.DIGIT_NAMES) and all("{}" in t for t in templates)
  train, test = (_rows(os.path.join(digits, f"{s}.jsonl")) for s in ("train", "test"))
  assert (len(train), len(test)) == (1347, 450)
  assert not {r["image"] for r in train} & {r["image"] for r in test}
  for r in train + test:
    assert set(r) == {"image", "caption", "label"}
    assert r["caption"] in {t.format(names[r["label"]]) for t in templates}
  counts = np.bincount([r["label"] for r in test], minlength=10)
  assert counts.sum() == 450 and counts.min() >= 43 and counts.max() <= 46
  # The JSONL source reads it; the fixed split does not depend on anything but the data.
  src = sources.JsonlSource(os.path.join(digits, "train.jsonl"))
  assert len(src) == 1347 and src[0]["label"] == train[0]["label"]
  a, b = examples.stratified_split(examples.load_digits()[1])
  assert len(a) == 1347 and len(b) == 450 and not set(a) & set(b)


def test_own_data_config_trains_and_evaluates(digits, tmp_path):
  c = own_data.get_config(digits)
  c.total_steps, c.batch_size, c.log_every_steps = 2, 16, 1
  c.checkpoint.every_steps, c.checkpoint.async_save = 2, False
  c.eval.num_examples, c.eval.batch_size = 40, 20
  workdir = str(tmp_path / "run")
  one = jax.devices()[:1]
  out = trainer.train(c, workdir, log_to_stdout=False, devices=one)
  assert out["step"] == 2 and np.isfinite(out["metrics"]["loss"])
  assert out["metrics"]["contrastive/positives"] > 1  # labels reached the multi-positive loss
  res = evaluate.run(workdir, evaluators=["zero_shot"], devices=one)
  assert res["zero_shot/num_classes"] == 10 and res["zero_shot/examples"] == 40


def test_bench_variants_parse(digits):
  for name in bench.VARIANTS:
    if name.endswith("augment_4"):
      continue
    cfg = configure.resolve(bench.variant_config(name, digits, 10, 0))
    assert cfg.data.source == "jsonl" and cfg.total_steps == 10, name
  assert bench.describe("multi_positive_label").startswith("contrastive_only + ")


def test_missing_data_is_one_line(tmp_path):
  with pytest.raises(config_lib.ConfigError) as e:
    configure.resolve(own_data.get_config(str(tmp_path / "nowhere")))
  assert "\n" not in str(e.value) and "JSONL manifest not found" in str(e.value)


def test_mixed_aspect_digits_sit_whole_on_canvases_of_1_3_to_3_1(tmp_path):
  """--mixed_aspect: each digit, unscaled, on a black canvas of aspect 1:3 to 3:1; the
  captions are the square set's."""
  img = examples.upsample(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, 16)
  aspects = []
  for i in range(200):
    c = examples.on_canvas(img, np.random.RandomState(i))
    assert min(c.shape[:2]) == 16 and c.sum() == img.sum()
    aspects.append(c.shape[1] / c.shape[0])
  assert min(aspects) < 0.4 and max(aspects) > 2.5 and all(1 / 3.1 < a < 3.1 for a in aspects)
  images, labels = examples.load_digits()
  rows = examples._write_split(str(tmp_path), "test", images, labels, range(6), 16, 0, 0,
                               mixed_aspect=True)  # pylint: disable=protected-access
  square = examples._write_split(str(tmp_path / "sq"), "test", images, labels, range(6), 16, 0,
                                 0)  # pylint: disable=protected-access
  assert [r["caption"] for r in rows] == [r["caption"] for r in square]
  from PIL import Image  # pylint: disable=import-outside-toplevel
  shapes = {Image.open(tmp_path / r["image"]).size for r in rows}
  assert len(shapes) > 1 and all(min(s) == 16 for s in shapes)
