"""Captioning through what a person runs: train.py with loss_weights.caption, eval.py's caption
evaluator, and generate.py on the test split (`python -m mmjax.generate` on a folder of
images), each as a subprocess; mistakes end in one line."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_entry

COCA = ("--config=tests/tiny_config.py", "--config.mesh.data=-1",
        "--config.model.fusion=dual_encoder", "--config.loss_weights.itm=0",
        "--config.loss_weights.mlm=0", "--config.loss_weights.mim=0",
        "--config.loss_weights.caption=1", "--config.total_steps=3",
        "--config.checkpoint.every_steps=3")


_run = run_entry


def _special_ids(config):
  from mmjax.data import text  # pylint: disable=import-outside-toplevel
  tok = text.from_config(config.data)
  return dict(bos_id=tok.cls_id, eos_id=tok.sep_id, pad_id=tok.pad_id)


def _one_line_error(r, *fragments):
  assert r.returncode != 0
  assert "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, r.stderr[-2000:]
  for f in fragments:
    assert f in errors[0], errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("coca")
  r = _run(["train.py", *COCA, f"--workdir={w}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "caption=1.0" in r.stdout + r.stderr
  return w


def test_eval_reports_caption_scores_and_the_shuffled_baseline(workdir):
  r = _run(["eval.py", f"--workdir={workdir}", "--evaluators=caption",
            "--config.eval.caption_beam=2", "--config.eval.num_examples=16"], devices=2)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((workdir / "eval" / "results.json").read_text())
  for k in ("cider", "bleu4", "exact_match", "shuffled_cider", "shuffled_exact_match"):
    assert 0.0 <= res[f"caption/{k}"] <= (10.0 if "cider" in k else 1.0), k
  assert res["caption/examples"] == 16 and len(res["caption/samples"]) == 5
  assert "caption/cider" in r.stdout


def test_generate_captions_the_test_split_and_a_folder(workdir, tmp_path):
  out = tmp_path / "caps.jsonl"
  r = _run(["generate.py", f"--workdir={workdir}", "--num_examples=4", "--beam=2",
            f"--out={out}"])
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
  assert len(rows) == 4 and all({"index", "reference", "caption"} <= set(x) for x in rows)
  assert [json.loads(ln) for ln in out.read_text().splitlines()] == rows
  assert all(x["reference"].startswith("a ") for x in rows)  # built-in captions, decoded
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.RandomState(0)
  for i in range(3):  # 3 images on 2 devices: padded to the device count, then dropped
    Image.fromarray(rng.randint(0, 255, (24, 20, 3), np.uint8)).save(folder / f"{i}.png")
  r = _run(["-m", "mmjax.generate", f"--workdir={workdir}", f"--images={folder}"], devices=2)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
  assert [x["file"] for x in rows] == ["0.png", "1.png", "2.png"]
  # The captions are the library's greedy decoding of the same images (so preprocessing,
  # device padding and detokenizing are right), and the model says something.
  from mmjax import generate, restore  # pylint: disable=import-outside-toplevel
  from mmjax.data import text  # pylint: disable=import-outside-toplevel
  config, model, params, mesh, _ = restore.restore(str(workdir))
  _, images = generate._folder_images(config, str(folder), 0)  # pylint: disable=protected-access
  ids = generate.greedy(model, params, images, max_len=config.data.text_len,
                        **_special_ids(config))
  want = generate.decode_texts(text.from_config(config.data), ids)
  assert [x["caption"] for x in rows] == want
  assert any(x["caption"].strip() for x in rows), rows
  # mmjax.load(...).caption is the same greedy decoding of the same files.
  import mmjax  # pylint: disable=import-outside-toplevel
  assert mmjax.load(str(workdir)).caption(sorted(folder.glob("*.png"))) == want


def test_generate_mistakes_are_one_line(workdir, tmp_path):
  _one_line_error(_run(["generate.py", f"--workdir={workdir}",
                        f"--images={tmp_path / 'nope'}"]), "is not a folder")
  _one_line_error(_run(["generate.py", f"--workdir={tmp_path / 'missing'}"]))
  _one_line_error(_run(["generate.py", f"--workdir={workdir}", "--beam=0"]),
                  "--beam=0 must be >= 1")
  _one_line_error(_run(["train.py", "--config=tests/tiny_config.py",
                        "--config.model.fusion=dual_encoder", "--config.loss_weights.itm=0",
                        "--config.loss_weights.prefix_lm=1", f"--workdir={tmp_path / 'w'}"]),
                  "prefix_lm", "dual_encoder")
