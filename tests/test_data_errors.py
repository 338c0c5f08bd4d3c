"""Bad examples at scale: data.on_error='skip' drops, counts (data/skipped) and logs them and
stops past data.max_skip_fraction; 'stop' ends the run naming the file and the manifest line."""
import json
import logging
import os
import re
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from mmjax.data import pipeline
from tests.helpers import subprocess_env, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, SEED = 60, 0
MANY = 160  # a manifest with 25% bad images: one batch of 128 reads past MIN_READ


def _bad_indices(n=N, k=3, seed=SEED):
  """k examples early in the first shuffled epoch and late in the second: after one pass
  (8 steps of 8) exactly these k have been read as bad."""
  order = grain.MapDataset.range(n).shuffle(seed=seed).repeat()
  pos1 = {int(order[p]): p for p in range(n)}
  pos2 = {int(order[p]): p - n for p in range(n, 2 * n)}
  return sorted(i for i in range(n) if pos1[i] < 50 and pos2[i] > 20)[:k], pos1


def _write(d, n, bad, name="m.jsonl"):
  rng = np.random.RandomState(0)
  rows = []
  for i in range(n):
    p = os.path.join(d, f"img{i}.png")
    if i in bad:
      with open(p, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage bytes, not an image")
    else:
      Image.fromarray(rng.randint(0, 255, (20, 20, 3), np.uint8)).save(p)
    rows.append(json.dumps({"image": f"img{i}.png", "caption": f"photo {i}", "label": i % 3}))
  path = os.path.join(d, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(rows) + "\n")
  return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("bad_data"))
  bad, pos1 = _bad_indices()
  assert len(bad) == 3
  many = {i for i in range(MANY) if i % 4 == 1}  # 25% bad
  os.makedirs(os.path.join(d, "many"))
  return {"dir": d, "bad": bad, "pos1": pos1, "manifest": _write(d, N, bad), "many_bad": many,
          "many": _write(os.path.join(d, "many"), MANY, many)}


def _data(path, **kw):
  return {"source": "jsonl", "jsonl_path": path, "image_size": 16, "text_len": 12, **kw}


def _run(args):
  env = subprocess_env(devices=1)
  return subprocess.run([sys.executable, "train.py", "--config=tests/tiny_config.py",
                         "--config.mesh.data=-1", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _one_error_line(r):
  assert r.returncode != 0, r.stdout[-2000:]
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  return errors[0]


# ----------------------------------------------------------------------------- pipeline

def test_skip_is_deterministic_and_restores(world):
  cfg = _data(world["manifest"], on_error="skip", max_skip_fraction=0.1)
  mk = lambda: iter(pipeline.make_dataset(cfg, "train", global_batch_size=8, seed=SEED))
  a, b = mk(), mk()
  first = [next(a) for _ in range(4)]
  for x, y in zip(first, [next(b) for _ in range(4)]):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  bad = set(world["bad"])
  assert all(not bad & set(x["index"].tolist()) and x["image"].shape[0] == 8 for x in first)
  state = json.loads(json.dumps(a.get_state()))
  want = [next(a) for _ in range(5)]
  c = mk()
  c.set_state(state)
  for x, y in zip(want, [next(c) for _ in range(5)]):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  counter = pipeline.SkipCounter()
  for x in first + want:
    counter.update(x)
  assert counter.total() == 3  # 9 batches: all of epoch 1 read, epoch 2's bad ones not yet


def test_skip_source_errors_counted_and_named(world, caplog):
  """Bad JSON, a missing file and a bad label are skipped like corrupt images, named once."""
  d = os.path.join(world["dir"], "src")
  os.makedirs(d)
  path = _write(d, 20, set())
  lines = open(path, encoding="utf-8").read().splitlines()
  lines[1] = '{"image": "img1.png", "caption": '
  lines[4] = json.dumps({"image": "nope.png", "caption": "x", "label": 0})
  lines[8] = json.dumps({"image": "img8.png", "caption": "x", "label": "cat"})
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  cfg = _data(path, on_error="skip", max_skip_fraction=0.5)
  with caplog.at_level(logging.WARNING):
    batches = list(pipeline.make_dataset(cfg, "train", global_batch_size=8, seed=0,
                                         shuffle=False, repeat=False))
  # one pass reads the first 16 (2 global batches); 13 of them are good: 1 full batch
  assert len(batches) == 1 and 8 not in batches[0]["index"]
  counter = pipeline.SkipCounter()
  for b in batches:
    counter.update(b)
  assert counter.total() == 3
  text = caplog.text
  for n, what in ((2, "bad JSON"), (5, "nope.png"), (9, "bad label")):
    assert sum(f"line {n} of {path}" in l for l in text.splitlines()) == 1, text
    assert what in text
  with pytest.raises(ValueError, match="bad JSON .line 2 of"):
    pipeline.make_dataset(_data(path), "train", global_batch_size=8, seed=0)


def test_max_skip_fraction_in_pipeline(world):
  cfg = _data(world["many"], on_error="skip", max_skip_fraction=0.1)
  it = iter(pipeline.make_dataset(cfg, "train", global_batch_size=8, seed=0))
  with pytest.raises(ValueError) as e:
    for _ in range(100):
      next(it)
  msg = str(e.value)
  assert "\n" not in msg and "data.max_skip_fraction" in msg and "examples read" in msg


def test_on_error_config_errors():
  with pytest.raises(ValueError, match="data.on_error.*stop, skip"):
    pipeline.make_dataset({"on_error": "ignore"}, "train", global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="max_skip_fraction"):
    pipeline.make_dataset({"max_skip_fraction": 2.0}, "train", global_batch_size=8, seed=0)


# ----------------------------------------------------------------------------- training

def test_train_skips_and_reports_data_skipped(world, tmp_path):
  from mmjax import trainer  # pylint: disable=import-outside-toplevel
  c = tiny_config("dual_encoder")  # the cheapest model to compile
  c.data.update(_data(world["manifest"], on_error="skip", max_skip_fraction=0.1))
  c.total_steps, c.log_every_steps = 8, 4  # 8 x 8 = 64 good examples > one pass (57)
  c.checkpoint.async_save = False
  out = trainer.train(c, str(tmp_path), log_to_stdout=False, devices=jax.devices()[:1])
  assert out["step"] == 8
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
  assert rows[-1]["step"] == 8 and rows[-1]["data/skipped"] == 3.0
  assert all(r["data/skipped"] <= 3 for r in rows)


def test_train_stop_names_file_and_line(world, tmp_path):
  """The first batch holds a bad image: the run stops before compiling."""
  r = _run([f"--workdir={tmp_path / 'w'}", "--config.data.source=jsonl",
            f"--config.data.jsonl_path={world['many']}"])
  line = _one_error_line(r)
  order = grain.MapDataset.range(MANY).shuffle(seed=SEED)
  first = next(int(order[p]) for p in range(MANY) if int(order[p]) in world["many_bad"])
  assert f"img{first}.png" in line and f"line {first + 1} of {world['many']}" in line, line


def test_train_stops_past_max_skip_fraction(tmp_path, world):
  r = _run([f"--workdir={tmp_path / 'w'}", "--config.data.source=jsonl",
            f"--config.data.jsonl_path={world['many']}", "--config.data.on_error=skip",
            "--config.data.max_skip_fraction=0.1", "--config.batch_size=128"])
  line = _one_error_line(r)
  assert re.search(r"\d+ of \d+ examples read were bad", line), line
  assert "data.max_skip_fraction" in line, line
