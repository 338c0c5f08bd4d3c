"""COCO and Flickr30k retrieval by name (configs/coco_retrieval.py, flickr30k_retrieval.py):
the Karpathy-split converter on fake copies with the real layout, and eval.py --eval_config on
a tiny checkpoint, its recalls checked against a caption-by-caption count from the model's own
embeddings."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmjax import evaluate, sharding
from mmjax.data import decode
from mmjax.data import text as text_lib
from mmjax.evaluators.common import Evaluated
from tests.test_eval_any_data import ROOT, _eval_py
from tests.test_multi_caption import DEV, init_checkpoint

TOK = text_lib.ByteTokenizer()
WORDS = ["red", "dog", "sky", "cat", "sea", "car", "old", "big", "man", "hat", "tree", "boat"]


def _write_images(folder, n, seed):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (18, 16, 3), dtype=np.uint8)).save(
        os.path.join(folder, f"{i}.jpg"), format="JPEG", quality=90)


def _sentences(i, n):
  return [f"{WORDS[(i * 5 + j) % 12]}  {WORDS[(i + 2 * j) % 12]} {i}{j}" for j in range(n)]


def _karpathy(tmp, name, counts, splits, filepath=None):
  """A dataset_*.json with the real layout and its images (filepath/filename)."""
  images = []
  for i, (n, split) in enumerate(zip(counts, splits)):
    entry = {"filename": f"{i}.jpg", "split": split, "imgid": i, "sentids": list(range(n)),
             "sentences": [{"raw": s, "tokens": s.split(), "imgid": i} for s in _sentences(i, n)]}
    if filepath:
      entry["filepath"] = filepath
    images.append(entry)
  _write_images(str(tmp / "images" / (filepath or "")), len(counts), seed=len(counts))
  path = tmp / name
  path.write_text(json.dumps({"images": images, "dataset": name.split("_")[1][:-5]}))
  return path


def _standard(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "mmjax.data.standard", *map(str, args)],
                        cwd=ROOT, env=env, capture_output=True, text=True)


def test_karpathy_converter(tmp_path):
  js = _karpathy(tmp_path, "dataset_coco.json", [5, 7, 6, 5], ["test", "train", "test", "restval"],
                 filepath="val2014")
  out = tmp_path / "out" / "coco_test.jsonl"
  r = _standard("karpathy", f"--json={js}", f"--images={tmp_path / 'images'}", "--split=test",
                f"--out={out}")
  assert r.returncode == 0, r.stderr
  rows = [json.loads(ln) for ln in out.read_text().splitlines()]
  assert len(rows) == 2  # images 0 and 2
  for row, i, n in zip(rows, (0, 2), (5, 6)):
    path = os.path.normpath(os.path.join(out.parent, row["image"]))
    assert path == str(tmp_path / "images" / "val2014" / f"{i}.jpg")
    assert row["caption"] == [" ".join(s.split()) for s in _sentences(i, n)]  # spaces folded
  r = _standard("karpathy", f"--json={js}", f"--images={tmp_path / 'images'}",
                "--split=train,restval", f"--out={out}")
  assert r.returncode == 0 and len(out.read_text().splitlines()) == 2
  # errors: one line, non-zero exit
  for args, needle in (([f"--images={tmp_path}", "--split=test"], "image not found"),
                       ([f"--images={tmp_path / 'images'}", "--split=dev"], "unknown Karpathy")):
    r = _standard("karpathy", f"--json={js}", *args, f"--out={out}")
    assert r.returncode == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _recalls(za, caps, ks=(1, 5, 10)):
  """R@k counted caption by caption: caps [(image, embedding)], at the 1e-4 resolution."""
  q = lambda x: np.round(x / 1e-4)
  n, out = len(za), {}
  for k in ks:
    out[f"a2b_R@{k}"] = np.mean([sum(q(za[i] @ v) >= max(q(za[i] @ w) for o, w in caps if o == i)
                                      for o, v in caps if o != i) < k for i in range(n)])
    out[f"b2a_R@{k}"] = np.mean([sum(q(za[i] @ v) >= q(za[o] @ v) for i in range(n) if i != o) < k
                                 for o, v in caps])
  return out


def _expected(workdir, image_paths, captions):
  config, model, params, mesh, _ = evaluate.restore(workdir, devices=DEV)
  ev = Evaluated(config, model, params, mesh, sharding.batch_sharding(mesh))
  pre = decode.Preprocessor(config.data)
  za = ev.embeddings(ev.encode({"image": np.stack([pre(0, {"image": p})["image"]
                                                   for p in image_paths])}))["image"]
  owner = [i for i, cs in enumerate(captions) for _ in cs]
  ids = np.stack([TOK.encode(c, config.data.text_len) for cs in captions for c in cs])
  return _recalls(za, list(zip(owner, ev.embeddings(ev.encode({"text": ids}))["text"])))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return init_checkpoint(str(tmp_path_factory.mktemp("run")))


def _check(res, want, images, captions):
  assert res["retrieval/examples"] == images and res["retrieval/captions"] == captions, res
  for key, v in want.items():
    assert res[f"retrieval/{key}"] == pytest.approx(v), (key, res, want)
  assert any(0 < v < 1 for v in want.values()), want  # a test that can tell


def test_flickr30k_from_karpathy_json_through_eval_py(workdir, tmp_path):
  counts = [5, 5, 5, 5, 5, 5]
  js = _karpathy(tmp_path, "dataset_flickr30k.json", counts, ["test"] * 5 + ["val"])
  manifest = tmp_path / "flickr30k_test.jsonl"
  assert _standard("karpathy", f"--json={js}", f"--images={tmp_path / 'images'}",
                   "--split=test", f"--out={manifest}").returncode == 0
  r = _eval_py(f"--workdir={workdir}",
               f"--eval_config=configs/flickr30k_retrieval.py:jsonl={manifest}")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(os.path.join(workdir, "eval", "results.json")))
  want = _expected(workdir, [str(tmp_path / "images" / f"{i}.jpg") for i in range(5)],
                   [[" ".join(s.split()) for s in _sentences(i, 5)] for i in range(5)])
  _check(res, want, 5, 25)


def test_coco_captions_tfds_through_eval_py(workdir, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  counts = [5, 7, 6, 5, 5]  # COCO images have 5 to 7 captions
  _write_images(str(tmp_path / "img"), len(counts), seed=3)
  paths = [str(tmp_path / "img" / f"{i}.jpg") for i in range(len(counts))]

  with tfds.core.registered.skip_registration():
    class CocoCaptions(tfds.core.GeneratorBasedBuilder):
      """coco_captions/2014's layout and version (1.1.0), a few images."""
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014", version="1.1.0")]

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(), "image/id": np.int64,
            "captions": tfds.features.Sequence({"text": tfds.features.Text(),
                                                "id": np.int64})}))

      def _split_generators(self, dl_manager):
        del dl_manager
        return {"test": self._generate_examples(range(5)),
                "train": self._generate_examples(range(2))}

      def _generate_examples(self, ids):
        for i in ids:
          yield i, {"image": paths[i], "image/filename": f"{i}.jpg", "image/id": i,
                    "captions": [{"text": s, "id": 10 * i + j}
                                 for j, s in enumerate(_sentences(i, counts[i]))]}

  data_dir = str(tmp_path / "tfds")
  CocoCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
  assert os.path.isdir(os.path.join(data_dir, "coco_captions", "2014", "1.1.0"))
  r = _eval_py(f"--workdir={workdir}", f"--eval_config=configs/coco_retrieval.py:tfds={data_dir}")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(os.path.join(workdir, "eval", "results.json")))
  want = _expected(workdir, paths, [_sentences(i, n) for i, n in enumerate(counts)])
  _check(res, want, 5, 28)
