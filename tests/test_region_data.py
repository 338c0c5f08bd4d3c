"""Regions from external data (data.regions=True): JSONL and webdataset examples carry
[{"box": [y0, x0, y1, x1], "caption": ...}], mapped through the image's centre crop; the
digits example writes its digit's ink box; bad regions are one-line errors through train.py."""
import json

import numpy as np
import pytest
from PIL import Image

from mmjax.data import config as data_config
from mmjax.data import examples, pipeline, regions, shards, write
from tests.helpers import run_entry


def _manifest(tmp_path, regions):
  """One 40 x 20 (h x w) black image with a white block at rows 12..27, cols 4..13."""
  img = np.zeros((40, 20, 3), np.uint8)
  img[12:28, 4:14] = 255
  Image.fromarray(img).save(tmp_path / "a.png")
  line = json.dumps({"image": "a.png", "caption": "a white block", "regions": regions})
  (tmp_path / "m.jsonl").write_text((line + "\n") * 4)
  return str(tmp_path / "m.jsonl")


def _first(path, **kw):
  cfg = data_config.get_config()
  cfg.update({"source": "jsonl", "jsonl_path": path or "unused", "image_size": 16,
              "regions": True,
              "max_objects": 3, "text_len": 24, **kw})
  return next(iter(pipeline.make_dataset(cfg, "train", global_batch_size=2, seed=0,
                                         shuffle=False)))


def test_jsonl_regions_follow_the_centre_crop_onto_the_pixels(tmp_path):
  block = [12 / 40, 4 / 20, 28 / 40, 14 / 20]
  above = [0.0, 0.0, 0.15, 1.0]  # rows 0..5: outside the 16 px centre crop of the 32 x 16 resize
  b = _first(_manifest(tmp_path, [{"box": block, "caption": "the block"},
                                  {"box": above, "caption": "the top"}]))
  assert b["region_boxes"].shape == (2, 3, 4) and b["region_text"].shape == (2, 3, 24)
  np.testing.assert_array_equal(b["region_valid"][0], [True, False, False])
  y0, x0, y1, x1 = b["region_boxes"][0, 0] * 16
  bright = np.argwhere(b["image"][0].mean(-1) > b["image"][0].mean())
  # the white block's pixels in the model's 16 x 16 input lie in the mapped box (bicubic
  # ringing: one pixel of slack), and the box is tight around them
  assert bright[:, 0].min() >= y0 - 1 and bright[:, 0].max() + 1 <= y1 + 1
  assert bright[:, 1].min() >= x0 - 1 and bright[:, 1].max() + 1 <= x1 + 1
  np.testing.assert_allclose([y0, x0, y1, x1], [1.6, 3.2, 14.4, 11.2], atol=1e-5)
  assert (b["region_text"][0, 1:] == 0).all() and (b["region_text"][0, 0] != 0).sum() > 8
  # squashing keeps the whole image: the box is the one written
  sq = _first(_manifest(tmp_path, [{"box": block, "caption": "x"}]), image_resize="pil_squash")
  np.testing.assert_allclose(sq["region_boxes"][0, 0], block, atol=1e-6)


@pytest.mark.parametrize("regions,match", [
    ([{"box": [0.5, 0, 0.2, 1], "caption": "x"}], "bad region"),
    ([{"box": [0, 0, 1], "caption": "x"}], "bad region"),
    ([{"box": [0, 0, 1, 1.5], "caption": "x"}], "bad region"),
    ("a box", "not a list"),
])
def test_bad_regions_are_one_line_errors_naming_the_format(tmp_path, regions, match):
  with pytest.raises(ValueError) as e:
    _first(_manifest(tmp_path, regions))
  msg = str(e.value)
  assert match in msg and '"box": [y0, x0, y1, x1]' in msg and "\n" not in msg, msg


def test_webdataset_json_member_carries_regions():
  regions = [{"box": [0.1, 0.2, 0.3, 0.4], "caption": "a red circle"}]
  members = {"jpg": b"...", "json": json.dumps({"caption": "c", "regions": regions}).encode()}
  exts = {"image": ("jpg",), "text": ("json",)}
  raw = shards.members_to_raw(members, exts, ("image", "text"), "(shard 0, example 0)")
  assert raw["regions"] == regions and raw["text"] == "c"


def test_shards_written_from_a_manifest_give_its_regions(tmp_path):
  """mmjax.data.write puts the regions in the json member (captions stay in txt); the
  shards then decode to the manifest's region arrays."""
  path = _manifest(tmp_path, [{"box": [12 / 40, 4 / 20, 28 / 40, 14 / 20], "caption": "block"}])
  res = write.write("jsonl", path, "wds", str(tmp_path / "wds"), shard_size=3)
  a = _first(path)
  b = _first("", source="wds", wds_shards=res["pattern"])
  for k in ("region_boxes", "region_text", "region_valid", "text"):
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_digits_ink_box_is_tight_around_the_ink():
  rng = np.random.RandomState(0)
  digit = examples.upsample(examples.load_digits()[0][3], 16)
  img = examples.on_square_canvas(digit, 32, rng)
  y0, x0, y1, x1 = (np.asarray(examples.ink_box(img)) * 32).round().astype(int)
  ink = img.max(-1) > examples.INK
  assert ink[y0:y1, x0:x1].sum() == ink.sum()  # every ink pixel inside
  assert ink[y0].any() and ink[y1 - 1].any() and ink[:, x0].any() and ink[:, x1 - 1].any()
  assert examples.ink_box(np.zeros((4, 4, 3), np.uint8)) == [0.0, 0.0, 1.0, 1.0]


def test_train_py_stops_on_a_bad_region_with_one_line(tmp_path):
  path = _manifest(tmp_path, [{"box": [0.9, 0, 0.1, 1], "caption": "upside down"}])
  p = run_entry(["train.py", "--config=configs/siglip2.py", f"--workdir={tmp_path / 'w'}",
                 "--config.data.source=jsonl", f"--config.data.jsonl_path={path}",
                 "--config.data.test_examples=4", "--config.batch_size=2"], timeout=300)
  assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
  assert "bad region" in p.stderr and "[y0, x0, y1, x1]" in p.stderr, p.stderr[-2000:]


def test_regions_from_a_source_that_has_none_is_a_config_error(tmp_path):
  p = run_entry(["train.py", "--config=configs/siglip2.py", f"--workdir={tmp_path / 'w'}",
                 "--config.data.source=folder", f"--config.data.folder_path={tmp_path}"],
                timeout=120)
  assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
  assert "data.regions=True" in p.stderr and "data.source='folder'" in p.stderr, p.stderr


def test_crop_boxes_is_the_crop_in_unit_coordinates():
  window = (8, 0, 32, 16)  # a 32 x 16 resize, rows 8..23 kept
  got = regions.crop_boxes(np.asarray([[0.25, 0.0, 0.75, 1.0]], np.float32), window, 16)
  np.testing.assert_allclose(got, [[0.0, 0.0, 1.0, 1.0]])
