"""Sharded archives: the writer (python -m mmjax.data.write) and the webdataset / ArrayRecord
sources read back through the grain pipeline, on manifests and folders the tests write."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmjax.data import audio as audio_lib
from mmjax.data import pipeline, shards, sources, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"image_size": 8, "text_len": 16}


def _manifest(d, n=23):
  """n examples: PNG / JPEG / GIF images of distinct colours, unique captions (every third a
  list of two), labels i % 4."""
  os.makedirs(os.path.join(d, "img"), exist_ok=True)
  rows = []
  for i in range(n):
    ext = ("png", "jpg", "gif")[i % 3]
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 255, (6 + i % 3, 7, 3), dtype=np.uint8)).save(
        os.path.join(d, "img", f"{i}.{ext}"))
    caption = [f"caption {i}", f"another {i}"] if i % 3 == 2 else f"caption {i}"
    rows.append({"image": f"img/{i}.{ext}", "caption": caption, "label": i % 4})
  path = os.path.join(d, "m.jsonl")
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return path


def _av_manifest(d, n=6):
  """Videos (a .npy clip or a folder of frames) with WAV or .npy-spectrogram-free audio."""
  rows = []
  for i in range(n):
    rng = np.random.default_rng(100 + i)
    if i % 2:
      vid = os.path.join(d, f"v{i}")
      os.makedirs(vid)
      for t in range(5):
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(
            os.path.join(vid, f"{t:03d}.png"))
    else:
      vid = os.path.join(d, f"v{i}.npy")
      np.save(vid, rng.integers(0, 255, (4, 6, 6, 3), dtype=np.uint8))
    wav = os.path.join(d, f"a{i}.wav")
    audio_lib.write_wav(wav, np.sin(np.arange(4000) * (0.01 + 0.01 * i)), 16_000)
    rows.append({"video": os.path.basename(vid), "audio": os.path.basename(wav),
                 "caption": f"clip {i}"})
  path = os.path.join(d, "av.jsonl")
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("shards"))
  m = _manifest(d)
  res = write.write("jsonl", m, "wds", os.path.join(d, "wds"), shard_size=5)
  return {"dir": d, "manifest": m, "wds": res}


def _cfg(**kw):
  return dict(BASE, **kw)


def test_expand_braces():
  assert shards.expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
  assert shards.expand_braces("{a,b}/x-{8..10}") == ["a/x-8", "a/x-9", "a/x-10", "b/x-8",
                                                     "b/x-9", "b/x-10"]
  assert shards.expand_braces("plain.tar") == ["plain.tar"]
  with pytest.raises(ValueError, match="runs backwards"):
    shards.expand_braces("s-{3..1}.tar")


def test_writer_output_reads_back_identical_to_the_manifest(data):
  """Every example from the shards equals the manifest's after decoding (pixels, tokens,
  label), in the manifest's order; the members are the source files' bytes."""
  res = data["wds"]
  assert res["examples"] == 23 and len(res["shards"]) == 5
  assert res["pattern"].endswith("shard-{000000..000004}.tar")
  for captions, keys in ((1, ["image", "index", "label", "text"]),
                         (2, ["image", "index", "label", "num_captions", "text", "texts"])):
    j = pipeline.make_source(_cfg_resolved(source="jsonl", jsonl_path=data["manifest"],
                                           max_captions=captions), "train")
    w = pipeline.make_source(_cfg_resolved(source="wds", wds_shards=res["pattern"],
                                           max_captions=captions), "train")
    assert len(j) == len(w) == 23
    for i in range(23):
      a, b = j[i], w[i]
      assert sorted(a) == sorted(b) == keys
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} of example {i}")
    if captions == 2:  # example 2 has two captions, example 0 one
      assert int(w[2]["num_captions"]) == 2 and int(w[0]["num_captions"]) == 1
  src = shards.WdsSource(res["shards"])
  rows = [json.loads(line) for line in open(data["manifest"])]
  for i in (0, 1, 2, 22):
    m = src.members(i)
    img = rows[i]["image"]
    if img.endswith((".png", ".jpg")):
      assert m[img.rsplit(".", 1)[1]] == open(os.path.join(data["dir"], img), "rb").read()
    else:  # gif -> lossless png of the same pixels
      png = np.asarray(Image.open(io.BytesIO(m["png"])).convert("RGB"))
      np.testing.assert_array_equal(png, np.asarray(Image.open(
          os.path.join(data["dir"], img)).convert("RGB")))
    assert m["cls"] == str(i % 4).encode()
    if isinstance(rows[i]["caption"], list):
      assert json.loads(m["json"]) == {"captions": rows[i]["caption"]}
    else:
      assert m["txt"].decode() == rows[i]["caption"]
  assert src.key(7) == "000000007" and "shard-000001.tar" in src.where(7)


def _cfg_resolved(**kw):
  from mmjax.data import config as config_lib
  return config_lib.resolve(_cfg(**kw))


def test_writer_is_deterministic_and_array_record_matches(data, tmp_path):
  again = write.write("jsonl", data["manifest"], "wds", str(tmp_path / "again"), shard_size=5)
  digest = lambda ps: [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in ps]
  assert digest(again["shards"]) == digest(data["wds"]["shards"])
  ar = write.write("jsonl", data["manifest"], "array_record", str(tmp_path / "ar"), shard_size=10)
  assert len(ar["shards"]) == 3
  w = pipeline.make_source(_cfg_resolved(source="wds", wds_shards=data["wds"]["pattern"]), "train")
  a = pipeline.make_source(_cfg_resolved(source="array_record",
                                         array_record_paths=ar["pattern"]), "train")
  assert len(a) == 23
  for i in range(23):
    for k, v in w[i].items():
      np.testing.assert_array_equal(v, a[i][k], err_msg=k)


def test_video_and_audio_members(tmp_path):
  m = _av_manifest(str(tmp_path))
  res = write.write("jsonl", m, "wds", str(tmp_path / "s"), shard_size=4)
  cfg = dict(num_frames=3, audio_frames=16, mel_bins=8)
  j = pipeline.make_source(_cfg_resolved(source="jsonl", jsonl_path=m, **cfg), "train")
  w = pipeline.make_source(_cfg_resolved(source="wds", wds_shards=res["shards"], **cfg), "train")
  for i in range(6):
    assert sorted(w[i]) == ["audio", "index", "text", "video"]
    for k in j[i]:
      np.testing.assert_array_equal(j[i][k], w[i][k], err_msg=f"{k} of {i}")
  assert set(shards.WdsSource(res["shards"]).members(1)) == {"npy", "wav", "txt"}


def _tar(path, examples):
  with tarfile.open(path, "w") as tar:
    for key, members in examples:
      for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_mp4_and_flac_members_decode(tmp_path):
  """mp4 through PyAV (lossy: close to the frames encoded), FLAC through soundfile (lossless:
  equal to the same 16-bit samples read from a WAV)."""
  av = pytest.importorskip("av")
  sf = pytest.importorskip("soundfile")
  frames = np.zeros((4, 16, 16, 3), np.uint8)
  for t in range(4):
    frames[t, :, : 4 * (t + 1)] = 200
  buf = io.BytesIO()
  with av.open(buf, mode="w", format="mp4") as out:
    stream = out.add_stream("mpeg4", rate=4)
    stream.width = stream.height = 16
    stream.pix_fmt = "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
  pcm = (np.sin(np.arange(3000) * 0.05) * 16000).astype(np.int16)  # the same 16-bit samples
  flac, wav = io.BytesIO(), str(tmp_path / "x.wav")
  sf.write(flac, pcm, 16_000, format="FLAC", subtype="PCM_16")
  sf.write(wav, pcm, 16_000, format="WAV", subtype="PCM_16")
  _tar(str(tmp_path / "s.tar"), [("k0", {"mp4": buf.getvalue(), "flac": flac.getvalue(),
                                         "txt": b"hi"})])
  raw = shards.WdsSource([str(tmp_path / "s.tar")])[0]
  assert raw["video"].shape == (4, 16, 16, 3)
  assert np.abs(raw["video"].astype(float) - frames).mean() < 12
  ref, rate = audio_lib.read_wav(wav)
  assert raw["audio_rate"] == rate == 16_000
  np.testing.assert_array_equal(raw["audio"], ref)


def test_shard_assignment_gives_each_process_disjoint_shards_covering_the_set(data):
  """data.shard_assign='shards': process p reads shards p, p+2, ...: one epoch of each
  process's batches holds only its own shards' examples, and the two cover the set."""
  cfg = _cfg(source="wds", wds_shards=data["wds"]["pattern"], shard_assign="shards")
  rows = [json.loads(line) for line in open(data["manifest"])]
  first = lambda c: c[0] if isinstance(c, list) else c
  from mmjax.data import text as text_lib
  tok = text_lib.ByteTokenizer()
  owner = {tok.encode(first(r["caption"]), 16).tobytes(): i // 5 % 2 for i, r in enumerate(rows)}
  seen = []
  for p in range(2):
    ds = pipeline.make_dataset(cfg, "train", global_batch_size=4, seed=1, process_index=p,
                               process_count=2, repeat=False)
    texts = [t.tobytes() for b in ds for t in b["text"]]
    assert texts and {owner[t] for t in texts} == {p}, p
    seen.append(texts)
  assert not set(seen[0]) & set(seen[1])
  # shards 0, 2, 4 hold 5 + 5 + 3 examples, shards 1, 3 hold 5 + 5; one pass drops the tail
  # that does not fill a local batch of 2
  assert len(seen[0]) == 12 and len(seen[1]) == 10
  keys = []
  for p in range(2):
    src = shards.WdsSource(shards.assign(data["wds"]["shards"], p, 2))
    keys.append({src.key(i) for i in range(len(src))})
  assert len(keys[0]) == 13 and len(keys[1]) == 10 and not keys[0] & keys[1]
  assert keys[0] | keys[1] == {f"{i:09d}" for i in range(23)}
  with pytest.raises(ValueError, match="fewer than the 6 processes"):
    pipeline.make_dataset(cfg, "train", global_batch_size=6, seed=1, process_index=0,
                          process_count=6)


def test_example_assignment_equals_the_manifest_on_one_and_two_processes(data):
  """data.shard_assign='examples' (default): every process's batches from the shards equal
  its batches from the JSONL (same shuffle, same rows), for 1 and 2 processes."""
  for count in (1, 2):
    for p in range(count):
      kw = dict(global_batch_size=4, seed=5, process_index=p, process_count=count)
      a = iter(pipeline.make_dataset(_cfg(source="jsonl", jsonl_path=data["manifest"]),
                                     "train", **kw))
      b = iter(pipeline.make_dataset(_cfg(source="wds", wds_shards=data["wds"]["pattern"]),
                                     "train", **kw))
      for _ in range(8):  # past one epoch (23 examples)
        x, y = next(a), next(b)
        for k in x:
          np.testing.assert_array_equal(x[k], y[k])


def test_resume_mid_shard_continues_with_the_next_example(data):
  """Iterator state saved after 3 batches of 3 (mid-shard, shards of 5) restores to the very
  next batch, in both assignment modes."""
  for assign in ("examples", "shards"):
    cfg = _cfg(source="wds", wds_shards=data["wds"]["pattern"], shard_assign=assign)
    kw = dict(global_batch_size=6, seed=2, process_index=1, process_count=2)
    it = iter(pipeline.make_dataset(cfg, "train", **kw))
    for _ in range(3):
      next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    it2 = iter(pipeline.make_dataset(cfg, "train", **kw))
    it2.set_state(state)
    for w in want:
      got = next(it2)
      for k in w:
        np.testing.assert_array_equal(w[k], got[k], err_msg=assign)


def _corrupt_copy(data, tmp_path, example=7, ext="jpg"):
  """A copy of the shards with example 7's image bytes overwritten (the tar stays valid)."""
  out = tmp_path / "bad"
  out.mkdir()
  paths = []
  for p in data["wds"]["shards"]:
    paths.append(str(out / os.path.basename(p)))
    with open(p, "rb") as f, open(paths[-1], "wb") as g:
      g.write(f.read())
  ix = shards.TarIndex(paths[1])
  j = ix.keys.index(f"{example:09d}")
  with open(paths[1], "r+b") as f:
    f.seek(int(ix.offsets[ext][j]))
    f.write(b"\0" * int(ix.sizes[ext][j]))
  return paths


def test_corrupt_member_stops_with_one_line_or_is_skipped(data, tmp_path):
  paths = _corrupt_copy(data, tmp_path)
  stop = pipeline.make_source(_cfg_resolved(source="wds", wds_shards=paths), "train")
  with pytest.raises(ValueError) as e:
    stop[7]
  msg = str(e.value)
  assert "\n" not in msg and "000000007" in msg and "shard-000001.tar" in msg, msg
  cfg = _cfg(source="wds", wds_shards=paths, on_error="skip", max_skip_fraction=1.0)
  ds = pipeline.make_dataset(cfg, "train", global_batch_size=2, seed=0, shuffle=False,
                             repeat=False)
  counter = pipeline.SkipCounter()
  got = [int(i) for b in ds for i in counter.update(b)["index"]]
  # one pass over the first 22 (11 global batches); 7 is dropped, 21 remain: 10 full batches
  assert got == [i for i in range(22) if i != 7][:20]
  assert counter.total() == 1


def test_truncated_shard_and_missing_member(data, tmp_path):
  p = data["wds"]["shards"][0]
  cut = str(tmp_path / "cut.tar")
  with open(p, "rb") as f, open(cut, "wb") as g:
    g.write(f.read()[: os.path.getsize(p) // 2])
  with pytest.raises(ValueError, match="is not a readable tar") as e:
    shards.WdsSource([cut])
  assert "\n" not in str(e.value) and "cut.tar" in str(e.value)
  kept = shards.WdsSource([cut], on_error="skip")
  assert 0 < len(kept) < 5 and kept.errors
  assert [kept.key(i) for i in range(len(kept))] == [f"{i:09d}" for i in range(len(kept))]
  _tar(str(tmp_path / "m.tar"), [("a", {"png": open(os.path.join(
      data["dir"], "img", "0.png"), "rb").read(), "txt": b"x"}), ("b", {"txt": b"y"})])
  src = shards.WdsSource([str(tmp_path / "m.tar")])
  with pytest.raises(ValueError, match="has no image member"):
    src[1]


def test_folder_writer_classes_and_captions(tmp_path):
  root = tmp_path / "folder"
  for c, name in enumerate(["zebra", "ant", "moth"]):
    (root / name).mkdir(parents=True)
    for k in range(2):
      Image.fromarray(np.full((5, 5, 3), 40 * c + k, np.uint8)).save(root / name / f"{k}.png")
  src = sources.FolderSource(str(root))
  assert src.class_names == ("ant", "moth", "zebra") and len(src) == 6
  assert src[2]["label"] == 1 and src[2]["image"].endswith("moth/0.png")
  out = str(tmp_path / "s")
  r = subprocess.run([sys.executable, "-m", "mmjax.data.write", "--from=folder",
                      f"--src={root}", "--to=wds", f"--out={out}", "--shard_size=4",
                      "--caption_template=a photo of a {}."], cwd=ROOT, capture_output=True,
                     text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[-1] == (
      f"--config.data.source=wds --config.data.wds_shards='{out}/shard-{{000000..000001}}.tar'")
  assert open(os.path.join(out, "classes.txt")).read().split() == ["ant", "moth", "zebra"]
  cfg = _cfg_resolved(source="wds", wds_shards=f"{out}/shard-{{000000..000001}}.tar")
  assert sources.source_class_names(cfg) == ("ant", "moth", "zebra")
  raw = shards.WdsSource([f"{out}/shard-000001.tar"])[0]  # example 4: zebra/0.png
  assert raw["label"] == 2 and raw["text"] == "a photo of a zebra."
  bad = subprocess.run([sys.executable, "-m", "mmjax.data.write", "--from=jsonl",
                        f"--src={tmp_path}/nope.jsonl", "--to=wds", f"--out={out}"], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  assert bad.returncode == 2 and bad.stderr.startswith("error: JSONL manifest not found")
  assert "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_training_from_shards_equals_training_from_the_manifest(data, tmp_path):
  """The same tiny run (3 steps) from the JSONL and from the shards written from it: the same
  losses at every step."""
  import jax
  from mmjax import trainer
  from tests.helpers import tiny_config
  losses = {}
  for name, data_cfg in (("jsonl", dict(source="jsonl", jsonl_path=data["manifest"])),
                         ("wds", dict(source="wds", wds_shards=data["wds"]["pattern"]))):
    c = tiny_config("dual_encoder")
    c.mesh.data = 1
    c.data = dict(image_size=16, text_len=12, **data_cfg)
    c.batch_size, c.total_steps, c.log_every_steps = 8, 3, 1
    c.checkpoint.every_steps = 100
    wd = str(tmp_path / name)
    trainer.train(c, wd, log_to_stdout=False, devices=jax.devices()[:1])
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      losses[name] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses["jsonl"]) == 3 and np.isfinite(losses["jsonl"]).all()
  assert losses["wds"] == losses["jsonl"]


def test_input_benchmark_compares_sources_on_generated_jpegs(tmp_path, capsys):
  from mmjax.bench import input as bench
  rows = bench.main(["--synthetic_jpeg=12", "--jpeg_size=40x30", "--shard_size=5",
                     "--sources=jsonl,wds,array_record", "--workers=0", "--image_size=16",
                     "--batch=4", "--steps=2", "--warmup=1", f"--cache_dir={tmp_path}"])
  assert [r["source"] for r in rows] == ["jsonl", "wds", "array_record"]
  assert all(r["examples_per_s"] > 0 and r["shapes"]["image"] == [4, 16, 16, 3] for r in rows)
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == rows
  assert len(shards.shard_paths(f"{tmp_path}/wds")) == 3  # 12 examples, 5 per shard
