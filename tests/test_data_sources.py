"""External sources end to end, on fixtures the tests write: a TFDS dataset prepared as
ArrayRecord (no TensorFlow) and a JSONL manifest with PNGs, WAVs and videos; one-line errors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.data import audio as audio_lib
from mmjax.data import pipeline
from mmjax.data import text as text_lib

tfds = pytest.importorskip("tensorflow_datasets")
TOK = text_lib.ByteTokenizer()
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


class MmjaxTinyCaptions(tfds.core.GeneratorBasedBuilder):
  """6 train + 2 test examples: a solid-colour 12x16 image, a caption, a label."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(12, 16, 3)),
        "caption": tfds.features.Text(),
        "meta": {"label": tfds.features.ClassLabel(num_classes=6)},
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(6)), "test": self._generate_examples(range(2))}

  def _generate_examples(self, ids):
    for i in ids:
      # images go in as PIL images: encoding numpy arrays would need tf.image (TensorFlow)
      img = Image.fromarray(np.full((12, 16, 3), COLOURS[i], np.uint8))
      yield i, {"image": img, "caption": f"caption number {i}", "meta": {"label": i}}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds.disable_progress_bar()
  d = str(tmp_path_factory.mktemp("tfds"))
  MmjaxTinyCaptions(data_dir=d, file_format="array_record").download_and_prepare()
  return d


def _tfds_cfg(d, **kw):
  return {"source": "tfds", "tfds_name": "mmjax_tiny_captions", "tfds_data_dir": d,
          "image_size": 8, "text_len": 24,
          "feature_keys": {"image": "image", "text": "caption", "label": "meta/label"}, **kw}


def _denorm(x):
  from mmjax.data.config import CLIP_MEAN, CLIP_STD
  return x * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN)


def test_tfds_arrayrecord_end_to_end(tfds_dir):
  assert any(f.endswith(".array_record-00000-of-00001")
             for _, _, fs in os.walk(tfds_dir) for f in fs)
  ds = pipeline.make_dataset(_tfds_cfg(tfds_dir), "train", global_batch_size=6, seed=0,
                             repeat=False)
  (b,) = list(ds)
  assert b["image"].shape == (6, 8, 8, 3) and b["image"].dtype == np.float32
  assert b["text"].shape == (6, 24) and b["label"].dtype == np.int32
  assert sorted(b["index"].tolist()) == list(range(6))
  for k in range(6):
    # TFDS shuffles records when preparing: tie each row to its own caption
    j = int(TOK.decode(b["text"][k]).split()[-1])
    assert int(b["label"][k]) == j
    np.testing.assert_allclose(_denorm(b["image"][k]).mean(axis=(0, 1)),
                               np.asarray(COLOURS[j]) / 255, atol=0.02)
  test = list(pipeline.make_dataset(_tfds_cfg(tfds_dir), "test", global_batch_size=2, seed=0,
                                    repeat=False))
  assert len(test) == 1 and sorted(test[0]["label"].tolist()) == [0, 1]


def test_tfds_sharded_and_restorable(tfds_dir):
  cfg = _tfds_cfg(tfds_dir)
  per = [list(pipeline.make_dataset(cfg, "train", global_batch_size=6, seed=1, repeat=False,
                                    process_index=p, process_count=3)) for p in range(3)]
  idx = np.concatenate([per[p][0]["index"] for p in range(3)])
  assert sorted(idx.tolist()) == list(range(6))
  it = iter(pipeline.make_dataset(cfg, "train", global_batch_size=2, seed=1))
  next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = next(it)
  it2 = iter(pipeline.make_dataset(cfg, "train", global_batch_size=2, seed=1))
  it2.set_state(state)
  got = next(it2)
  assert all(np.array_equal(want[k], got[k]) for k in want)


def test_tfds_missing_feature_key_is_one_line(tfds_dir):
  cfg = _tfds_cfg(tfds_dir, feature_keys={"image": "image", "text": "captionz"})
  with pytest.raises(ValueError) as e:
    pipeline.make_dataset(cfg, "train", global_batch_size=2, seed=0)
  msg = str(e.value)
  assert "\n" not in msg and "'captionz'" in msg and "data.feature_keys.text" in msg
  assert "available: " in msg and all(f in msg for f in ("caption", "image", "meta/label"))


def test_tfds_missing_dataset_and_split_are_one_line(tfds_dir):
  with pytest.raises(FileNotFoundError) as e:
    pipeline.make_dataset(_tfds_cfg(tfds_dir, tfds_name="not_prepared"), "train",
                          global_batch_size=2, seed=0)
  assert "\n" not in str(e.value) and "not_prepared" in str(e.value)
  with pytest.raises(ValueError) as e:
    pipeline.make_dataset(_tfds_cfg(tfds_dir, tfds_split_eval="validation"), "test",
                          global_batch_size=2, seed=0)
  assert "\n" not in str(e.value) and "validation" in str(e.value)


# ----------------------------------------------------------------------------- JSONL

def _write_png(path, rgb, size=(10, 14)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full(size + (3,), rgb, np.uint8)).save(path)


@pytest.fixture()
def manifest(tmp_path):
  """4 examples: PNG image, WAV or .npy audio, .npy video or a frame folder, caption, label."""
  rows = []
  for i in range(4):
    _write_png(str(tmp_path / "img" / f"{i}.png"), COLOURS[i])
    t = np.arange(16_000 // 4) / 16_000
    if i % 2:
      (tmp_path / "aud").mkdir(exist_ok=True)
      audio_lib.write_wav(str(tmp_path / "aud" / f"{i}.wav"),
                          0.5 * np.sin(2 * np.pi * 440 * (i + 1) * t), 16_000)
      aud = f"aud/{i}.wav"
    else:
      np.save(tmp_path / f"spec{i}.npy", np.random.default_rng(i).normal(size=(40, 8)))
      aud = f"spec{i}.npy"
    if i % 2:
      for f in range(5):
        _write_png(str(tmp_path / "vid" / f"{i}" / f"{f:03d}.png"), COLOURS[f % 6], (6, 6))
      vid = f"vid/{i}"
    else:
      np.save(tmp_path / f"vid{i}.npy", np.full((3, 6, 6, 3), 40 * i, np.uint8))
      vid = f"vid{i}.npy"
    rows.append({"image": f"img/{i}.png", "audio": aud, "video": vid,
                 "caption": f"example {i}", "label": i})
  path = tmp_path / "manifest.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def _jsonl_cfg(path, **kw):
  return {"source": "jsonl", "jsonl_path": path, "image_size": 8, "text_len": 16,
          "num_frames": 4, "audio_frames": 12, "mel_bins": 8, **kw}


def test_jsonl_end_to_end(manifest):
  ds = pipeline.make_dataset(_jsonl_cfg(manifest), "train", global_batch_size=4, seed=0,
                             shuffle=False, repeat=False)
  (b,) = list(ds)
  assert b["image"].shape == (4, 8, 8, 3) and b["video"].shape == (4, 4, 8, 8, 3)
  assert b["audio"].shape == (4, 12, 8) and b["text"].shape == (4, 16)
  assert b["label"].tolist() == [0, 1, 2, 3] and b["index"].tolist() == [0, 1, 2, 3]
  assert [TOK.decode(t) for t in b["text"]] == [f"example {i}" for i in range(4)]
  for i in range(4):
    np.testing.assert_allclose(_denorm(b["image"][i]).mean(axis=(0, 1)),
                               np.asarray(COLOURS[i]) / 255, atol=0.02)
  np.testing.assert_allclose(_denorm(b["video"][2]), 80 / 255, atol=0.02)       # .npy video
  frames = _denorm(b["video"][1]).mean(axis=(1, 2))                           # frame folder
  np.testing.assert_allclose(frames[0], np.asarray(COLOURS[0]) / 255, atol=0.02)  # first frame
  np.testing.assert_allclose(frames[-1], np.asarray(COLOURS[4]) / 255, atol=0.02)  # last frame
  for i in range(4):
    a = b["audio"][i]
    assert abs(a.mean()) < 1e-4 and abs(a.std() - 1) < 1e-3
  # WAV: a steady 880 Hz / 1760 Hz tone peaks in one mel bin, higher for the higher tone
  peak1, peak3 = (np.bincount(b["audio"][i].argmax(axis=1)).argmax() for i in (1, 3))
  assert (b["audio"][1].argmax(axis=1) == peak1).mean() > 0.9 and peak3 > peak1


def test_jsonl_include_caption(manifest):
  (b,) = list(pipeline.make_dataset(_jsonl_cfg(manifest, include_caption=True), "train",
                                    global_batch_size=4, seed=0, shuffle=False, repeat=False))
  assert b["caption"].tolist() == [f"example {i}" for i in range(4)]


def _err(exc, cfg, *needles, iterate=False):
  with pytest.raises(exc) as e:
    ds = pipeline.make_dataset(cfg, "train", global_batch_size=1, seed=0)
    if iterate:
      next(iter(ds))
  msg = str(e.value)
  assert "\n" not in msg, msg
  assert all(n in msg for n in needles), msg
  return msg


def test_jsonl_missing_file_is_one_line(tmp_path, manifest):
  _write_png(str(tmp_path / "a.png"), (1, 2, 3))
  p = tmp_path / "m.jsonl"
  p.write_text('{"image": "a.png", "caption": "x"}\n{"image": "gone.png", "caption": "y"}\n')
  msg = _err(FileNotFoundError, _jsonl_cfg(str(p)), "gone.png", "line 2", "fix the path")
  assert str(tmp_path) in msg


def test_jsonl_unreadable_image_is_one_line(tmp_path):
  (tmp_path / "bad.png").write_bytes(b"definitely not a png")
  p = tmp_path / "m.jsonl"
  p.write_text('{"image": "bad.png", "caption": "x", "label": 0}\n')
  _err(ValueError, _jsonl_cfg(str(p)), "cannot read image", "bad.png", "line 1",
       "valid PNG/JPEG", iterate=True)


def test_jsonl_empty_manifest_is_one_line(tmp_path):
  p = tmp_path / "empty.jsonl"
  p.write_text("\n  \n")
  _err(ValueError, _jsonl_cfg(str(p)), "empty.jsonl", "has no examples", "one JSON object per line")


def test_jsonl_bad_lines_are_one_line(tmp_path):
  p = tmp_path / "m.jsonl"
  p.write_text('{"image": "a.png"\n')
  _err(ValueError, _jsonl_cfg(str(p)), "bad JSON", "line 1")
  p.write_text('{"picture": "a.png"}\n')
  _err(ValueError, _jsonl_cfg(str(p)), "unknown manifest key", "picture")


def test_jsonl_eval_manifest(tmp_path, manifest):
  _write_png(str(tmp_path / "e.png"), (9, 9, 9))
  ev = tmp_path / "eval.jsonl"
  ev.write_text('{"image": "e.png", "caption": "held out", "label": 5}\n')
  cfg = _jsonl_cfg(manifest, jsonl_eval_path=str(ev))
  (b,) = list(pipeline.make_dataset(cfg, "test", global_batch_size=1, seed=0, repeat=False))
  assert b["label"].tolist() == [5] and TOK.decode(b["text"][0]) == "held out"
