"""Imported SigLIP 2 (transformers' Siglip2Model, model_type 'siglip2') against the reference
model built at random init in the reference venv (tests/reference/make_reference.py
hf_siglip2): embeddings and logits within 1e-4 at fixed resolution (square images) and as
NaFlex (patch rows of several aspects in one batch, zero-padded), equal parameter counts, the
position table resized as torch's F.interpolate(bilinear, antialias=True) resizes it, the
command line and its one-line errors."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import evaluate, models, tokenizers
from mmjax.convert import common, hf
from tests.helpers import apply, reference  # noqa: F401  (reference: a fixture)
from tests.test_convert import _one_error_line

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _outputs(config, params, image_batch, ids):
  model = models.build_model(config)
  embed = lambda m, b: m.contrastive_embedding(m.encode(m.embed(b)))
  v = {"params": params}
  img = apply(model, v, {k: jnp.asarray(x) for k, x in image_batch.items()},
              method=embed)["image"]
  txt = apply(model, v, {"text": jnp.asarray(ids)}, method=embed)["text"]
  logits = apply(model, v, img, txt, "sigmoid", method=model.alignment_logits)
  return np.asarray(img), np.asarray(txt), np.asarray(logits)


def _check(name, got, ref, prefix=""):
  d = lambda a, b: float(np.max(np.abs(a - b)))
  img, txt, logits = got
  want = [ref[f"{prefix}{k}"] for k in ("image_embeds", "text_embeds", "logits")]
  print(f"{name}: max |diff| image {d(img, want[0]):.1e}, text {d(txt, want[1]):.1e}, "
        f"logits {d(logits, want[2]):.1e}")
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)


def test_fixed_resolution_matches_the_reference(reference):
  folder = reference("hf_siglip2")
  ref = np.load(folder / "reference.npz")
  config, params = hf.convert(str(folder), max_patches=0)
  assert common.count(params) == int(ref["n_params"])
  assert config.data.max_patches == 0 and config.data.image_size == 32
  assert tuple(config.model.modalities.image.grid) == (4, 4)
  _check("siglip2 fixed", _outputs(config, params, {"image": ref["images"]}, ref["ids"]), ref)
  # the texts differ in length: a wrong padding rule or pooled position would show here
  assert len({int((i != 0).sum()) for i in ref["ids"]}) == 3


def test_naflex_matches_the_reference(reference):
  folder = reference("hf_siglip2")
  ref = np.load(folder / "reference.npz")
  config, params = hf.convert(str(folder))
  assert common.count(params) == int(ref["n_params"])
  assert config.data.max_patches == 16 and config.data.patch_size == 8
  grids, mask = ref["naflex_grids"], ref["naflex_mask"]
  assert len({g[0] / g[1] for g in grids.tolist()}) == 3   # three aspects in one batch
  assert (mask.sum(1) < mask.shape[1]).sum() >= 2           # two of them padded
  batch = {"image": ref["naflex_rows"], "image_patch_grid": grids}
  _check("siglip2 NaFlex", _outputs(config, params, batch, ref["ids"]), ref, "naflex_")
  # the square images as patch rows of the 4 x 4 table's grid: the fixed-resolution outputs
  rows = np.asarray(tokenizers.patchify_image(jnp.asarray(ref["images"]), 8))
  square = {"image": rows, "image_patch_grid": np.full((len(rows), 2), 4, np.int32)}
  _check("siglip2 NaFlex, square rows", _outputs(config, params, square, ref["ids"]), ref)


def test_position_table_resizes_as_torch_interpolate(reference):
  """tokenizers.resize_weights on the converted table equals F.interpolate(bilinear,
  antialias=True, align_corners=False) of the PyTorch table: grids shrunk, enlarged and
  mixed (2 x 6, 5 x 3, 3 x 3, 8 x 8, 1 x 16)."""
  folder = reference("hf_siglip2")
  ref = np.load(folder / "reference.npz")
  _, params = hf.convert(str(folder))
  table = params["embed_image"]["pos_embedding"]  # [4, 4, D]
  names = [k for k in ref.files if k.startswith("interp_")]
  assert len(names) == 5
  for name in names:
    h, w = (int(x) for x in name.removeprefix("interp_").split("x"))
    k = jnp.arange(h * w)[None]
    grid = jnp.asarray([[h, w]])
    wy = tokenizers.resize_weights(k // w, grid[:, :1], 4)
    wx = tokenizers.resize_weights(k % w, grid[:, 1:], 4)
    got = np.einsum("bny,bnx,yxd->bnd", wy, wx, table)[0].reshape(h, w, -1)
    np.testing.assert_allclose(got, ref[name], atol=1e-6, rtol=0, err_msg=name)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "mmjax.convert", *args], capture_output=True,
                        text=True, cwd=ROOT, env=ENV, timeout=600)


def test_command_line_writes_a_naflex_workdir_that_restores(reference, tmp_path):
  folder = reference("hf_siglip2")
  work = tmp_path / "siglip2"
  r = _cli("hf", f"--src={folder}", f"--out={work}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "wrote" in r.stdout
  _, params = hf.convert(str(folder))
  cfg, _, restored, _, step = evaluate.restore(str(work))
  assert step == 0 and cfg.model.fusion.name == "dual_encoder"
  assert cfg.data.max_patches == 16 and cfg.data.tokenizer_specials.sep == "<eos>"
  flat = lambda t: dict(common._leaf_items(t))
  got, want = flat(restored["params"]), flat(params)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])
  # a folder that is no SigLIP 2 at all, and --max_patches given to one that is not SigLIP 2
  assert "config.json" in _one_error_line(_cli("hf", f"--src={tmp_path}",
                                               f"--out={tmp_path / 'w'}"))
  bad = _copy(folder, tmp_path / "siglip", model_type="siglip")
  assert "applies to siglip2" in _one_error_line(
      _cli("hf", f"--src={bad}", "--max_patches=64", f"--out={tmp_path / 'w'}"))
  assert not (tmp_path / "w").exists()


def _copy(folder, dst, tokenizer_config=None, **vision):
  """The reference folder with config.json edited (model_type, or vision_config keys)."""
  shutil.copytree(folder, dst)
  cfg = json.loads((dst / "config.json").read_text())
  if "model_type" in vision:
    cfg["model_type"] = vision.pop("model_type")
  cfg["vision_config"].update(vision)
  (dst / "config.json").write_text(json.dumps(cfg))
  if tokenizer_config is not None:
    (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
  return dst


@pytest.mark.parametrize("edit,message", [
    ({"num_patches": 15}, "not a square number"),
    ({"vision_use_head": False}, "vision_use_head=false"),
    ({"patch_size": [8, 4]}, "not square"),
    ({"num_channels": 1}, "num_channels=1"),
    ({"tokenizer_config": {"padding_side": "left"}}, "pads on the left"),
])
def test_unsupported_settings_are_one_line_errors(reference, tmp_path, edit, message):
  folder = _copy(reference("hf_siglip2"), tmp_path / "edited", **edit)
  with pytest.raises(common.ConvertError, match=message) as e:
    hf.convert(str(folder))
  assert "\n" not in str(e.value)


def test_tokenizer_config_sets_the_framing(reference, tmp_path):
  folder = _copy(reference("hf_siglip2"), tmp_path / "edited", tokenizer_config={
      "padding_side": "right", "add_bos_token": True, "bos_token": "<bos>",
      "eos_token": {"content": "<eos>"}, "pad_token": "<pad>"})
  config, _ = hf.convert(str(folder), max_patches=0)
  assert dict(config.data.tokenizer_specials) == {"cls": "<bos>", "sep": "<eos>",
                                                   "pad": "<pad>"}
  assert config.data.lowercase  # Siglip2Tokenizer lowercases
