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
