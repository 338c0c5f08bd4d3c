"""Imported CLIP / SigLIP against the reference PyTorch implementations (transformers,
open_clip) built at random init inside the tests, in the reference venv (.venv-ref, which
`make test` builds): embeddings and logits within 1e-4 (float32), equal parameter counts,
and the command line (`python -m mmjax.convert`) with its one-line errors."""
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import evaluate, models
from mmjax.convert import common, hf, open_clip
from tests.helpers import REF_PY, apply, reference  # noqa: F401  (reference: a fixture)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ("hf_clip", "hf_siglip", "open_clip_clip", "open_clip_siglip")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _convert(layout, folder, reference):
  if layout.startswith("hf_"):
    return hf.convert(str(folder))
  tok_from = reference("hf_siglip" if "siglip" in layout else "hf_clip")
  return open_clip.convert(str(folder / "open_clip.safetensors"),
                           f"hf:{tok_from / 'tokenizer.json'}",
                           config_file=str(folder / "model_config.json"))


def _outputs(config, params, images, ids):
  model = models.build_model(config)
  embed = lambda m, b: m.contrastive_embedding(m.encode(m.embed(b)))
  v = {"params": params}
  img = apply(model, v, {"image": jnp.asarray(images)}, method=embed)["image"]
  txt = apply(model, v, {"text": jnp.asarray(ids)}, method=embed)["text"]
  kind = "sigmoid" if "sigmoid" in model.cfg.objective_heads else "contrastive"
  logits = apply(model, v, img, txt, kind, method=model.alignment_logits)
  return np.asarray(img), np.asarray(txt), np.asarray(logits)


def _report(name, img, txt, logits, ref):
  """The measured differences (shown by pytest -s)."""
  d = lambda a, b: float(np.max(np.abs(a - b)))
  print(f"{name}: max |diff| image {d(img, ref['image_embeds']):.1e}, text "
        f"{d(txt, ref['text_embeds']):.1e}, logits {d(logits, ref['logits']):.1e}")


@pytest.mark.parametrize("layout", SMALL)
def test_small_layouts_match_the_reference(layout, reference):
  folder = reference(layout)
  ref = np.load(folder / "reference.npz")
  config, params = _convert(layout, folder, reference)
  assert common.count(params) == int(ref["n_params"])
  img, txt, logits = _outputs(config, params, ref["images"], ref["ids"])
  _report(layout, img, txt, logits, ref)
  np.testing.assert_allclose(img, ref["image_embeds"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(txt, ref["text_embeds"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
  # the texts differ in length: a wrong padding rule or pooled position would show here
  assert len({int((i != i[-1]).sum()) for i in ref["ids"]}) > 1


def test_full_size_vit_b16_matches_open_clip(reference):
  folder = reference("open_clip_vit_b16")
  ref = np.load(folder / "reference.npz")
  config, params = open_clip.convert(str(folder / "open_clip.safetensors"),
                                     f"hf:{folder / 'tokenizer.json'}", name="ViT-B-16")
  assert common.count(params) == int(ref["n_params"]) == 149_620_737
  img, txt, logits = _outputs(config, params, ref["images"], ref["ids"])
  assert img.shape == (2, 512)
  _report("open_clip ViT-B/16", img, txt, logits, ref)
  np.testing.assert_allclose(img, ref["image_embeds"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(txt, ref["text_embeds"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "mmjax.convert", *args], capture_output=True,
                        text=True, cwd=ROOT, env=ENV, timeout=600)


def test_command_line_writes_a_workdir_that_restores(reference, tmp_path):
  folder = reference("hf_siglip")
  work = tmp_path / "siglip"
  r = _cli("hf", f"--src={folder}", f"--out={work}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "wrote" in r.stdout
  config, params = hf.convert(str(folder))
  cfg, _, restored, _, step = evaluate.restore(str(work))
  assert step == 0 and cfg.model.fusion.name == "dual_encoder"
  flat = lambda t: dict(common._leaf_items(t))
  got, want = flat(restored["params"]), flat(params)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])
  # writing over an existing workdir is refused, the checkpoint left as it was
  before = sorted((p.relative_to(work), p.stat().st_size) for p in work.rglob("*") if p.is_file())
  r = _cli("hf", f"--src={folder}", f"--out={work}")
  assert r.returncode != 0 and "already holds checkpoints" in r.stderr
  assert before == sorted((p.relative_to(work), p.stat().st_size)
                          for p in work.rglob("*") if p.is_file())


def _one_error_line(r):
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, r.stderr[-2000:]
  return lines[0]


def test_command_line_errors_are_one_line(reference, tmp_path):
  folder = reference("open_clip_clip")
  tok = f"hf:{reference('hf_clip') / 'tokenizer.json'}"
  cfg = f"--model_config={folder / 'model_config.json'}"
  out = f"--out={tmp_path / 'w'}"
  # a PyTorch pickle needs torch, which the library install does not have
  assert "needs torch" in _one_error_line(
      _cli("open_clip", f"--weights={folder / 'open_clip.bin'}", f"--tokenizer={tok}", cfg, out))
  truncated = tmp_path / "cut.safetensors"
  truncated.write_bytes((folder / "open_clip.safetensors").read_bytes()[:5000])
  assert "corrupt" in _one_error_line(
      _cli("open_clip", f"--weights={truncated}", f"--tokenizer={tok}", cfg, out))
  assert "no tokenizer" in _one_error_line(
      _cli("open_clip", f"--weights={folder / 'open_clip.safetensors'}", cfg, out))
  assert "unknown open_clip model" in _one_error_line(
      _cli("open_clip", f"--weights={folder / 'open_clip.safetensors'}", f"--tokenizer={tok}",
           "--model=ViT-Q-99", out))
  # the wrong architecture for these weights: a shape or a missing entry, named
  assert "lacks" in _one_error_line(
      _cli("open_clip", f"--weights={folder / 'open_clip.safetensors'}", f"--tokenizer={tok}",
           "--model=ViT-B-16", out))
  assert "config.json" in _one_error_line(_cli("hf", f"--src={tmp_path}", out))
  assert not (tmp_path / "w").exists()


def test_eval_zero_shot_predictions_equal_the_reference_model(reference, tmp_path):
  """eval.py zero-shot on a JSONL set of a converted CLIP predicts, image by image, what the
  transformers model predicts: labels set to the reference predictions score 1.0, the same
  labels shifted by one class score 0.0."""
  import json
  from PIL import Image
  folder = reference("hf_clip")
  work = tmp_path / "clip"
  assert _cli("hf", f"--src={folder}", f"--out={work}").returncode == 0
  rng = np.random.default_rng(1)
  (tmp_path / "img").mkdir()
  for i in range(24):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        tmp_path / "img" / f"{i:02d}.png")
  names = ["w10", "w11 w12", "w13", "w14 w15 w16"]
  (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
  (tmp_path / "templates.txt").write_text("w5 {}\nw6 w7 {} w8\n")
  pred_file = tmp_path / "pred.npy"
  r = subprocess.run([REF_PY, str(ROOT / "tests" / "reference" / "make_reference.py"),
                      "zeroshot", str(folder), str(tmp_path / "img"), str(tmp_path / "names.txt"),
                      str(tmp_path / "templates.txt"), str(pred_file)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  pred = np.load(pred_file)
  assert len(set(pred.tolist())) > 1  # a constant prediction would prove little

  def accuracy(labels, name):
    manifest = tmp_path / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"img/{i:02d}.png", "caption": "w5",
                                            "label": int(l)}) + "\n"
                                for i, l in enumerate(labels)))
    out = tmp_path / f"eval_{name}"
    r = subprocess.run(
        [sys.executable, "eval.py", f"--workdir={work}", "--evaluators=zero_shot",
         f"--out={out}", "--config.data.source=jsonl", f"--config.data.jsonl_path={manifest}",
         f"--config.data.class_names={tmp_path / 'names.txt'}",
         f"--config.data.prompt_templates={tmp_path / 'templates.txt'}",
         "--config.eval.num_examples=24", "--config.eval.batch_size=8"],
        capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["zero_shot/examples"] == 24
    return res["zero_shot/accuracy"]

  assert accuracy(pred, "same") == 1.0
  assert accuracy((pred + 1) % len(names), "shifted") == 0.0


def test_lit_from_a_converted_checkpoint_keeps_the_image_tower_bitwise(reference, tmp_path):
  folder = reference("hf_clip")
  base, lit = tmp_path / "clip", tmp_path / "lit"
  assert _cli("hf", f"--src={folder}", f"--out={base}").returncode == 0
  r = subprocess.run(
      [sys.executable, "train.py", f"--config=configs/finetune.py:{base}", f"--workdir={lit}",
       "--config.freeze=image", "--config.total_steps=3", "--config.batch_size=8",
       "--config.optimizer.learning_rate=1e-3", "--config.optimizer.warmup_steps=0",
       "--config.checkpoint.async_save=False", "--config.data.train_examples=64",
       "--config.data.test_examples=16"],
      capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  flat = lambda w: dict(common._leaf_items(evaluate.restore(str(w))[2]["params"]))
  before, after = flat(base), flat(lit)
  assert sorted(before) == sorted(after)
  image = [k for k in before if k.startswith(("embed_image", "fusion/tower_image",
                                              "proj_image"))]
  text = [k for k in before if k.startswith(("embed_text", "fusion/tower_text", "proj_text"))]
  assert image and text
  for k in image:
    np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(before[k]), err_msg=k)
  moved = [k for k in text if not np.array_equal(np.asarray(after[k]), np.asarray(before[k]))]
  assert len(moved) > len(text) // 2, moved


def test_clip_bpe_through_the_hf_backend_tokenizes_as_open_clip(tmp_path):
  """CLIP's BPE (open_clip's shipped vocabulary, as a tokenizer.json) through mmjax's hf:
  backend with CLIP's framing gives open_clip.tokenize's ids, truncation included."""
  from mmjax.convert.common import FRAMING
  from mmjax.data import text as text_lib
  r = subprocess.run([REF_PY, str(ROOT / "tests" / "reference" / "make_reference.py"),
                      "clip_tokenizer", str(tmp_path)], capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  ref = np.load(tmp_path / "reference.npz")
  specials, lowercase = FRAMING["clip"]
  tok = text_lib.get_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}", specials, lowercase)
  assert (tok.cls_id, tok.sep_id, tok.pad_id) == (49406, 49407, 0)
  got = np.stack([tok.encode(str(t), 77) for t in ref["texts"]])
  np.testing.assert_array_equal(got, ref["ids"])
  assert got[-1, -1] == 49407  # the 300-character text is cut, its end token kept


def test_hf_text_cleaning_follows_the_folders_tokenizer(tmp_path):
  """SiglipTokenizer (spiece.model) lowercases per its do_lower_case and canonicalizes as
  Hugging Face does; a tokenizer.json brings its own normalizer; CLIP always lowercases."""
  from mmjax.convert import hf  # pylint: disable=import-outside-toplevel
  spm, fast = f"sentencepiece:{tmp_path}/spiece.model", f"hf:{tmp_path}/tokenizer.json"
  assert hf.text_cleaning(str(tmp_path), spm, "siglip") == (True, "hf")
  (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
  assert hf.text_cleaning(str(tmp_path), spm, "siglip") == (False, "hf")
  assert hf.text_cleaning(str(tmp_path), fast, "siglip") == (False, "")
  assert hf.text_cleaning(str(tmp_path), fast, "clip") == (True, "")
