"""grain pipeline: determinism, per-process sharding, checkpointable iterators, config errors."""
import json

import jax
import numpy as np
import pytest

from mmjax.data import config as config_lib
from mmjax.data import pipeline

TINY = {"train_examples": 48, "test_examples": 20, "image_size": 8, "text_len": 12,
        "num_hard_negatives": 1}


def _batches(n, **kw):
  kw = {"global_batch_size": 8, "seed": 0, **kw}
  data = kw.pop("data", TINY)
  it = iter(pipeline.make_dataset(data, kw.pop("split", "train"), **kw))
  return [next(it) for _ in range(n)]


def _eq(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_layout():
  (b,) = _batches(1)
  assert b["image"].shape == (8, 8, 8, 3) and b["image"].dtype == np.float32
  assert b["text"].shape == (8, 12) and b["text"].dtype == np.int32
  assert b["neg_text"].shape == (8, 1, 12)
  assert b["label"].shape == (8,) and b["index"].shape == (8,)
  assert "caption" not in b


def test_same_seed_same_batches_other_seed_differs():
  a, b, c = _batches(4), _batches(4), _batches(4, seed=1)
  assert all(_eq(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))


def test_epoch_is_a_permutation_and_epochs_reshuffle():
  bs = _batches(12)  # 96 examples = 2 epochs of 48
  e1 = np.concatenate([b["index"] for b in bs[:6]])
  e2 = np.concatenate([b["index"] for b in bs[6:]])
  assert sorted(e1) == list(range(48)) and sorted(e2) == list(range(48))
  assert not np.array_equal(e1, e2)


@pytest.mark.parametrize("procs", [2, 4])
def test_processes_disjoint_and_cover_the_global_batch(procs):
  ref = _batches(5)  # one process: the global batches
  per = [_batches(5, process_index=p, process_count=procs) for p in range(procs)]
  for step in range(5):
    parts = [per[p][step]["index"] for p in range(procs)]
    assert all(len(x) == 8 // procs for x in parts)
    flat = np.concatenate(parts)
    assert len(set(flat.tolist())) == 8                                  # disjoint
    # the same global batch, rows in the same order: process blocks concatenate to it
    np.testing.assert_array_equal(flat, ref[step]["index"])
  # and the images follow the indices (no per-process generation differences)
  i0 = per[1][0]["index"][0]
  j = list(ref[0]["index"]).index(i0)
  np.testing.assert_array_equal(per[1][0]["image"][0], ref[0]["image"][j])


def test_one_pass_without_repeat_or_shuffle():
  ds = pipeline.make_dataset(TINY, "test", global_batch_size=8, seed=0, shuffle=False,
                             repeat=False)
  idx = [b["index"].tolist() for b in ds]
  assert idx == [list(range(0, 8)), list(range(8, 16))]  # 20 examples: the tail of 4 is dropped
  per = [list(pipeline.make_dataset(TINY, "test", global_batch_size=8, seed=0, shuffle=False,
                                    repeat=False, process_index=p, process_count=2))
         for p in range(2)]
  assert len(per[0]) == len(per[1]) == 2
  assert [b["index"].tolist() for b in per[1]] == [list(range(4, 8)), list(range(12, 16))]
  assert pipeline.steps_per_epoch(TINY, "test", 8) == 2


def test_iterator_state_restores_exactly_the_next_batch():
  ds = pipeline.make_dataset(TINY, "train", global_batch_size=8, seed=3)
  it = iter(ds)
  for _ in range(7):  # cross an epoch boundary
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  # in memory
  it2 = iter(ds)
  it2.set_state(state)
  assert all(_eq(e, next(it2)) for e in expected)
  # through JSON (what a checkpoint stores), into a freshly built pipeline
  restored = json.loads(json.dumps(state))
  it3 = iter(pipeline.make_dataset(TINY, "train", global_batch_size=8, seed=3))
  it3.set_state(restored)
  assert all(_eq(e, next(it3)) for e in expected)


def test_multiprocess_workers_match_and_restore():
  """grain's worker processes, outside absl.app: absl's flags are not marked parsed for them."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  parsed = flags.FLAGS.is_parsed()
  ref = _batches(3)
  ds = pipeline.make_dataset(TINY, "train", global_batch_size=8, seed=0, num_workers=2)
  assert flags.FLAGS.is_parsed() == parsed  # a library leaves the user's flag state alone
  it = iter(ds)
  try:
    got = [next(it) for _ in range(3)]
    assert all(_eq(a, b) for a, b in zip(ref, got))
    state = json.loads(json.dumps(it.get_state()))
    nxt = next(it)
  finally:
    it.close()
  it2 = iter(pipeline.make_dataset(TINY, "train", global_batch_size=8, seed=0, num_workers=2))
  try:
    it2.set_state(state)
    assert _eq(nxt, next(it2))
  finally:
    it2.close()


@pytest.mark.parametrize("task,keys", [("video_text", {"video"}), ("audio_text", {"audio"}),
                                       ("audio_video", {"video", "audio"})])
def test_other_tasks_batch(task, keys):
  data = {**TINY, "task": task, "num_frames": 2, "audio_frames": 8, "mel_bins": 8}
  (b,) = _batches(1, data=data, global_batch_size=4)
  assert keys <= set(b) and b["text"].shape == (4, 12)


def test_include_caption_strings():
  (b,) = _batches(1, data={**TINY, "include_caption": True}, global_batch_size=4)
  assert b["caption"].shape == (4,) and b["caption"].dtype.kind == "U"
  assert b["neg_caption"].shape == (4, 1)


def test_to_global_arrays_single_process():
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  (b,) = _batches(1, data={**TINY, "include_caption": True})
  g = pipeline.to_global_arrays(b, sharding)
  assert isinstance(g["image"], jax.Array) and g["image"].shape == (8, 8, 8, 3)
  np.testing.assert_array_equal(np.asarray(g["text"]), b["text"])
  assert isinstance(g["caption"], np.ndarray)  # strings stay on the host


# ----------------------------------------------------------------------------- config errors

def _one_line_error(exc, match, fn):
  with pytest.raises(exc) as e:
    fn()
  msg = str(e.value)
  assert "\n" not in msg and all(m in msg for m in match), msg
  return msg


def test_config_defaults():
  c = config_lib.get_config()
  assert (c.source, c.task, c.image_size, c.num_frames, c.audio_frames, c.mel_bins, c.text_len,
          c.tokenizer, c.num_hard_negatives) == ("builtin", "image_text", 32, 8, 64, 32, 32,
                                                 "bytes", 3)
  assert dict(c.feature_keys) == {"image": "image", "text": "caption", "label": "label"}
  assert (c.train_examples, c.test_examples) == (50_000, 1_000)


def test_config_errors_are_one_line():
  mk = lambda d: pipeline.make_dataset(d, "train", global_batch_size=8, seed=0)  # noqa: E731
  _one_line_error(ValueError, ["data.source", "builtin, tfds, jsonl"], lambda: mk({"source": "s3"}))
  _one_line_error(ValueError, ["data.task", "image_text"], lambda: mk({"task": "smell_text"}))
  _one_line_error(ValueError, ["data.imag_size", "known keys"], lambda: mk({"imag_size": 3}))
  _one_line_error(ValueError, ["tfds_name"], lambda: mk({"source": "tfds"}))
  _one_line_error(FileNotFoundError, ["/nope/m.jsonl", "data.jsonl_path"],
                  lambda: mk({"source": "jsonl", "jsonl_path": "/nope/m.jsonl"}))
  _one_line_error(FileNotFoundError, ["/nope/tfds", "data.tfds_data_dir"],
                  lambda: mk({"source": "tfds", "tfds_name": "x", "tfds_data_dir": "/nope/tfds"}))
  _one_line_error(ValueError, ["multiple of process_count"],
                  lambda: pipeline.make_dataset(TINY, "train", global_batch_size=6, seed=0,
                                                process_count=4))
  _one_line_error(ValueError, ["fewer than one global batch"],
                  lambda: pipeline.make_dataset(TINY, "test", global_batch_size=64, seed=0))
  _one_line_error(ValueError, ["unknown split"],
                  lambda: pipeline.make_dataset(TINY, "dev", global_batch_size=8, seed=0))


def test_input_benchmark_runs(capsys):
  from mmjax.bench import input as bench
  res = bench.main(["--batch=4", "--image_size=8", "--steps=2", "--warmup=1",
                    "--data.train_examples=16"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last)["examples_per_s"] == res["examples_per_s"] > 0


def test_jpeg_draft_decodes_large_jpegs_reduced_and_close_to_the_full_decode(tmp_path):
  """data.jpeg_draft: a JPEG over twice the resize decodes at a DCT scale (here 1/2), a few
  levels from the full decode's pixels; a JPEG under that and a PNG are decoded as before,
  bit for bit. The pipeline reads the key from the data config (default on)."""
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from mmjax.bench.input import photo_like  # pylint: disable=import-outside-toplevel
  from mmjax.data import config as data_config, decode  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)

  def encoded(size, fmt):
    buf = io.BytesIO()
    photo_like(rng, size).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()
  big, small, png = encoded((667, 500), "JPEG"), encoded((400, 300), "JPEG"), encoded(
      (667, 500), "PNG")
  for recipe in ("pil", "torchvision_squash"):
    full, reduced = (decode.resize_image(big, 224, recipe, draft=d) for d in (False, True))
    assert full.shape == reduced.shape == (224, 224, 3)
    diff = np.abs(full - reduced) * 255
    assert 0.1 < diff.mean() < 6, (recipe, diff.mean())  # reduced, and still the same image
    for blob in (small, png):
      np.testing.assert_array_equal(decode.resize_image(blob, 224, recipe, draft=True),
                                    decode.resize_image(blob, 224, recipe))
  seen = []
  with Image.open(io.BytesIO(big)) as im:
    im.draft(None, (298, 224))
    seen.append(im.size)
  assert seen == [(334, 250)]  # what the draft decodes to: 1/2 scale
  cfg = data_config.get_config()
  assert cfg.jpeg_draft is True and decode.jpeg_draft(cfg)
  assert not decode.jpeg_draft({})  # a config saved before the key: the full decode
