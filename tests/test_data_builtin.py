"""Built-in dataset: shapes, determinism, held-out splits, one-binding hard negatives, and
captions that can be read back from the pixels / spectrograms."""
import numpy as np
import pytest

from mmjax.data import builtin, render
from mmjax.data import text as text_lib

TOK = text_lib.ByteTokenizer()
SMALL = dict(image_size=16, num_frames=4, audio_frames=16, mel_bins=16, text_len=24)


def _src(task, split="train", **kw):
  return builtin.BuiltinSource(task, split, include_caption=True, **{**SMALL, **kw})


@pytest.mark.parametrize("task,shapes", [
    ("image_text", {"image": (16, 16, 3)}),
    ("video_text", {"video": (4, 16, 16, 3)}),
    ("audio_text", {"audio": (16, 16)}),
    ("audio_video", {"video": (4, 16, 16, 3), "audio": (16, 16)}),
])
def test_shapes_dtypes_and_metadata(task, shapes):
  src = _src(task, num_hard_negatives=2)
  ex = src[3]
  for k, shp in shapes.items():
    assert ex[k].shape == shp and ex[k].dtype == np.float32 and np.isfinite(ex[k]).all()
  assert ex["text"].shape == (24,) and ex["text"].dtype == np.int32
  assert ex["neg_text"].shape == (2, 24) and ex["neg_text"].dtype == np.int32
  assert ex["label"].dtype == np.int32 and ex["label"].shape == ()
  assert int(ex["index"]) == 3
  names = builtin.class_names(task)
  assert 0 <= int(ex["label"]) < len(names) and len(set(names)) == len(names)
  assert all("{}" in t for t in builtin.prompt_templates(task))
  assert builtin.label_of(task, builtin.parse_caption(task, str(ex["caption"]))) == ex["label"]
  # the tokens are the caption (truncated to text_len)
  assert TOK.decode(ex["text"]) == str(ex["caption"])[:22]
  # no strings unless asked
  assert "caption" not in builtin.BuiltinSource(task, "train", **SMALL)[3]


def test_class_counts_and_sizes():
  assert len(builtin.class_names("image_text")) == 18
  assert len(builtin.class_names("video_text")) == 12
  assert len(builtin.class_names("audio_text")) == 6
  assert len(builtin.class_names("audio_video")) == 6
  assert builtin.num_examples("image_text", "train") == 50_000
  assert builtin.num_examples("image_text", "test") == 1_000
  assert builtin.num_examples("image_text", "test", {"test_examples": 7}) == 7
  with pytest.raises(ValueError, match="unknown built-in task"):
    builtin.class_names("music_text")


def test_deterministic_and_splits_differ():
  a, b = _src("image_text"), _src("image_text")
  for i in (0, 5, 17):
    ea, eb = a[i], b[i]
    for k in ea:
      np.testing.assert_array_equal(ea[k], eb[k])
  train = np.stack([a[i]["image"] for i in range(20)])
  test = np.stack([_src("image_text", "test")[i]["image"] for i in range(20)])
  other_seed = np.stack([_src("image_text", seed=1)[i]["image"] for i in range(20)])
  # held out: no test image equals any train image
  assert min(np.abs(t - train).max() for t in test) > 0.1
  assert not np.allclose(train, other_seed)


def test_bbox_painting_matches_full_grid():
  rng = np.random.default_rng(0)
  for _ in range(100):
    s = int(rng.integers(8, 48))
    shape, r = render.SHAPES[rng.integers(3)], rng.uniform(1, s / 3)
    cy, cx = rng.uniform(-3, s + 3, 2)
    full, box = np.zeros((s, s, 3), np.float32), np.zeros((s, s, 3), np.float32)
    render.paint(full, render.shape_mask(shape, cy, cx, r, s), "red")
    render.paint_shape(box, shape, cy, cx, r, "red")
    np.testing.assert_array_equal(full, box)


def test_normalized_pixels():
  x = np.stack([_src("image_text", image_size=32)[i]["image"] for i in range(300)])
  assert abs(x.mean()) < 0.2 and 0.7 < x.std() < 1.3


# ----------------------------------------------------------------------------- hard negatives

def _one_binding(task, truth, neg) -> bool:
  """True iff `neg` differs from `truth` in exactly one binding."""
  if task != "image_text":
    diff = [k for k in truth if truth[k] != neg[k]]
    return len(diff) == 1
  to, no = truth["objects"], neg["objects"]
  tr, nr = truth["relations"], neg["relations"]
  if len(to) != len(no) or len(tr) != len(nr):
    return False
  rel_diff = [j for j in range(len(tr)) if tr[j] != nr[j]]
  col = [i for i in range(len(to)) if to[i][0] != no[i][0]]
  shp = [i for i in range(len(to)) if to[i][1] != no[i][1]]
  if rel_diff:
    j = rel_diff[0]
    return len(rel_diff) == 1 and not col and not shp and nr[j] == builtin.FLIP[tr[j]]
  for moved, kept, a in ((col, shp, 0), (shp, col, 1)):
    if len(moved) == 2 and not kept:  # attribute swapped between two objects
      i, j = moved
      return no[i][a] == to[j][a] and no[j][a] == to[i][a]
  return len(col) + len(shp) == 1  # one attribute of one object replaced


@pytest.mark.parametrize("task", builtin.TASKS)
def test_hard_negatives_differ_in_exactly_one_binding(task):
  src = _src(task, num_hard_negatives=3, text_len=80)
  for i in range(60):
    ex = src[i]
    truth = builtin.parse_caption(task, str(ex["caption"]))
    negs = [str(c) for c in ex["neg_caption"]]
    assert len(set(negs)) == 3 and str(ex["caption"]) not in negs
    for j, cap in enumerate(negs):
      neg = builtin.parse_caption(task, cap)
      assert _one_binding(task, truth, neg), (str(ex["caption"]), cap)
      assert TOK.decode(ex["neg_text"][j]) == cap
    # the binding edits (swaps / flips) come first, then single-attribute replacements
    primary = {builtin.caption(task, p) for p in builtin.negative_candidates(task, truth)[0]}
    assert sum(n in primary for n in negs) == min(len(primary), 3)


def test_relation_flip_and_colour_swap_present():
  src = _src("image_text", text_len=96, num_hard_negatives=3)
  kinds = set()
  for i in range(80):
    ex = src[i]
    t = builtin.parse_caption("image_text", str(ex["caption"]))
    for cap in ex["neg_caption"]:
      n = builtin.parse_caption("image_text", str(cap))
      if n["relations"] != t["relations"]:
        kinds.add("relation")
      elif sorted(o[0] for o in n["objects"]) == sorted(o[0] for o in t["objects"]) \
          and n["objects"] != t["objects"] and len(t["objects"]) > 1 \
          and [o[1] for o in n["objects"]] == [o[1] for o in t["objects"]]:
        kinds.add("colour_swap")
  assert {"relation", "colour_swap"} <= kinds


# ----------------------------------------------------------------------------- learnable

def _nearest_colour(rgb):
  names = list(render.COLOURS)
  d = [np.abs(np.asarray(render.COLOURS[n]) - rgb).sum() for n in names]
  return names[int(np.argmin(d))]


def _colour_at(img, y, x):
  return _nearest_colour(img[y, x])


def test_image_caption_readable_from_pixels():
  s = 32
  src = builtin.BuiltinSource("image_text", "train", image_size=s, include_caption=True)
  mean, std = builtin.PIXEL_STATS["image_text"]
  for i in range(40):
    ex = src[i]
    img = ex["image"] * std + mean
    sem = builtin.parse_caption("image_text", str(ex["caption"]))
    c0 = sem["objects"][0][0]
    assert _colour_at(img, s // 2, s // 2) == c0  # the main object covers the centre
    colour_map = np.array([[_nearest_colour(p) if p.max() > 0.5 else "" for p in row]
                           for row in img])
    cy, cx = np.argwhere(colour_map == c0).mean(axis=0)
    for rel, (c, _) in zip(sem["relations"], sem["objects"][1:]):
      y, x = np.argwhere(colour_map == c).mean(axis=0)
      expect = {"left of": cx < x, "right of": cx > x, "above": cy < y, "below": cy > y}[rel]
      assert expect, (ex["caption"], rel, (cy, cx), (y, x))


def test_video_motion_readable_from_pixels():
  src = builtin.BuiltinSource("video_text", "train", image_size=32, num_frames=6,
                              include_caption=True)
  mean, std = builtin.PIXEL_STATS["video_text"]
  for i in range(24):
    ex = src[i]
    v = ex["video"] * std + mean
    sem = builtin.parse_caption("video_text", str(ex["caption"]))
    cents = np.array([np.argwhere(f.max(-1) > 0.5).mean(axis=0) for f in v])
    dy, dx = cents[-1] - cents[0]
    moved = {"left": dx < -5, "right": dx > 5, "up": dy < -5, "down": dy > 5}[sem["motion"]]
    assert moved, (ex["caption"], dy, dx)
    assert _colour_at(v[0], *np.round(cents[0]).astype(int)) == sem["colour"]


def test_audio_pattern_readable_from_spectrogram():
  src = builtin.BuiltinSource("audio_text", "train", include_caption=True)
  for i in range(24):
    ex = src[i]
    sem = builtin.parse_caption("audio_text", str(ex["caption"]))
    spec = ex["audio"]
    loud = spec.max(axis=1) > 0.5                         # frames where the tone sounds
    f0 = spec.argmax(axis=1)[loud]                        # the fundamental is the strongest bin
    q = max(len(f0) // 4, 1)
    first, last = np.median(f0[:q]), np.median(f0[-q:])
    p = sem["pattern"]
    if p in ("rising", "low then high"):
      assert last > first + 3, (p, first, last)
    elif p in ("falling", "high then low"):
      assert first > last + 3, (p, first, last)
    else:
      assert abs(first - last) <= 1, (p, first, last)
    pulsing = np.mean(loud) < 0.8
    assert pulsing == (sem["envelope"] == "pulsing"), (ex["caption"], np.mean(loud))


def test_audio_video_time_aligned():
  t, a = 8, 64
  src = builtin.BuiltinSource("audio_video", "train", num_frames=t, audio_frames=a,
                              include_caption=True)
  mean, std = builtin.PIXEL_STATS["audio_video"]
  for i in range(30):
    ex = src[i]
    sem = builtin.parse_caption("audio_video", str(ex["caption"]))
    visible = (ex["video"] * std + mean).max(axis=(1, 2, 3)) > 0.5      # [T]
    energy = ex["audio"].reshape(t, a // t, -1).max(axis=(1, 2))        # [T] per video step
    beeps = energy > 0.5 * energy.max()
    n = builtin.COUNTS.index(sem["count"]) + 1
    assert visible.sum() == n and beeps.sum() == n, (ex["caption"], visible, beeps)
    in_sync = np.array_equal(visible, beeps)
    assert in_sync == (sem["sync"] == "in sync"), (ex["caption"], visible, beeps)


def test_audio_video_needs_aligned_steps():
  with pytest.raises(ValueError, match="multiple of"):
    builtin.BuiltinSource("audio_video", "train", num_frames=8, audio_frames=60)


def test_generating_an_example_costs_under_2_ms_of_cpu():
  """A several-fold slowdown of the built-in generator fails here. CPU seconds of this process,
  not wall time: a test worker training beside it on the same cores does not count. (Its
  throughput is benchmarked by python -m mmjax.bench.input.)"""
  import time
  src = builtin.BuiltinSource("image_text", "train")
  src[0]
  t0 = time.process_time()
  for i in range(300):
    src[i]
  per_example = (time.process_time() - t0) / 300
  assert per_example < 2e-3, per_example


# ----------------------------------------------------------------------------- audio helpers

def test_log_mel_matches_dense_filterbank_and_wav_roundtrip(tmp_path):
  from mmjax.data import audio
  rng = np.random.default_rng(0)
  for rate, bins in ((16_000, 32), (16_000, 128), (8_000, 24)):
    w = rng.standard_normal(6000).astype(np.float32)
    win, hop, n_fft = audio.frame_params(rate)
    t = 1 + (w.size - win) // hop
    frames = np.stack([w[i * hop:i * hop + win] for i in range(t)]) * audio._hann(win)
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=-1)) ** 2
    dense = np.log(power @ audio.mel_filterbank(rate, n_fft, bins).astype(np.float64) + 1e-6)
    np.testing.assert_allclose(audio.log_mel(w, rate, bins), dense, atol=1e-4)
  assert audio.log_mel(w, 16_000, 32, num_frames=7).shape == (7, 32)
  tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(4000) / 16_000)
  audio.write_wav(str(tmp_path / "t.wav"), tone, 16_000)
  back, rate = audio.read_wav(str(tmp_path / "t.wav"))
  assert rate == 16_000 and np.abs(back - tone).max() < 1e-4
