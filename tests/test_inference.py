"""mmjax.load: the README's example on a converted CLIP predicts what eval.py predicts, image by
image; images of any size and mode are preprocessed as the data pipeline does; the learned
scale in similarity; one-line errors for a missing modality, wrong inputs, no checkpoint."""
import json
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

import mmjax
from mmjax.checkpoint import CheckpointError
from mmjax.data import decode
from mmjax.inference import LoadError
from tests.helpers import reference, run_entry  # noqa: F401  (reference: a fixture)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
NAMES = ["w10", "w11 w12", "w13", "w14 w15 w16"]  # words of the reference's tokenizer
TEMPLATES = ["w5 {}", "w6 w7 {} w8"]
# (size, mode): square, landscape, portrait, grayscale, RGBA, palette, smaller than the model.
SHAPES = [((32, 32), "RGB"), ((48, 32), "RGB"), ((24, 40), "RGB"), ((36, 36), "L"),
          ((40, 40), "RGBA"), ((33, 29), "P"), ((16, 20), "RGB")]


@pytest.fixture(scope="module")
def clip(reference, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """A tiny Hugging Face CLIP (random init, tests/reference) converted to a workdir."""
  work = tmp_path_factory.mktemp("inference") / "clip"
  r = run_entry(["-m", "mmjax.convert", "hf", f"--src={reference('hf_clip')}", f"--out={work}"])
  assert r.returncode == 0, r.stderr[-2000:]
  return work


@pytest.fixture(scope="module")
def loaded(clip):  # pylint: disable=redefined-outer-name
  return mmjax.load(str(clip))


def _photos(folder, n=24, seed=1):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    (w, h), mode = SHAPES[i % len(SHAPES)]
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(
        folder / f"{i:02d}.png")
  return sorted(folder.glob("*.png"))


def _readme_example() -> str:
  m = re.search(r"<!-- load example -->\s*```python\n(.*?)```", README.read_text(), re.S)
  assert m, "README.md lost its load example"
  return m.group(1)


def _eval_accuracy(clip, tmp_path, files, labels, templates, name):  # pylint: disable=redefined-outer-name
  manifest = tmp_path / f"{name}.jsonl"
  manifest.write_text("".join(json.dumps({"image": str(f), "caption": "w5", "label": int(l)})
                              + "\n" for f, l in zip(files, labels)))
  (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
  (tmp_path / "templates.txt").write_text("\n".join(templates) + "\n")
  out = tmp_path / f"eval_{name}"
  r = run_entry(["eval.py", f"--workdir={clip}", "--evaluators=zero_shot", f"--out={out}",
                 "--config.data.source=jsonl", f"--config.data.jsonl_path={manifest}",
                 f"--config.data.class_names={tmp_path / 'names.txt'}",
                 f"--config.data.prompt_templates={tmp_path / 'templates.txt'}",
                 f"--config.eval.num_examples={len(files)}"])
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out / "results.json").read_text())
  assert res["zero_shot/examples"] == len(files)
  return res["zero_shot/accuracy"]


def test_readme_example_predicts_what_eval_py_predicts(clip, tmp_path):  # pylint: disable=redefined-outer-name
  """The README block, run with this workdir, these photos and these class names: its
  predictions as labels score 1.0 in eval.py's zero-shot, shifted by one class 0.0."""
  code = _readme_example()
  assert len(code.strip().splitlines()) <= 10
  files = _photos(tmp_path / "photos")
  for old, new in (('"runs/clip_b16"', repr(str(clip))),
                   ('"photos/*.jpg"', repr(str(tmp_path / "photos" / "*.png"))),
                   ('["cat", "dog", "car"]', repr(NAMES)),
                   ('["a photo of a {}.", "a blurry photo of a {}."]', repr(TEMPLATES))):
    assert old in code, f"the README example no longer has {old}"
    code = code.replace(old, new)
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # pylint: disable=exec-used
  pred = np.asarray(scope["pred"])
  assert pred.shape == (len(files),) and len(set(pred.tolist())) > 1, pred
  assert _eval_accuracy(clip, tmp_path, files, pred, TEMPLATES, "same") == 1.0
  assert _eval_accuracy(clip, tmp_path, files, (pred + 1) % len(NAMES), TEMPLATES,
                        "shifted") == 0.0


def test_every_kind_of_image_input_is_the_pipelines_preprocessing(loaded, tmp_path):  # pylint: disable=redefined-outer-name
  files = _photos(tmp_path / "photos", n=len(SHAPES))
  pre = decode.Preprocessor(loaded.config.data)
  want = np.stack([pre.decode(0, {"image": str(f)})["image"] for f in files])
  assert want.shape == (len(files),) + tuple(loaded.config.model.modality("image").input_shape)
  np.testing.assert_array_equal(loaded.preprocess("image", files), want)
  z = loaded.encode_image(files)
  assert z.shape == (len(files), loaded.config.model.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, atol=1e-5)
  pil = [Image.open(f) for f in files]
  arrays = [np.asarray(p.convert("RGB")) for p in pil]
  raw_bytes = [f.read_bytes() for f in files]
  for other in (pil, arrays, raw_bytes, [str(f) for f in files]):
    np.testing.assert_allclose(loaded.encode_image(other), z, atol=1e-6)
  # One image alone, as a path or as one [H, W, C] array, is a batch of one.
  np.testing.assert_allclose(loaded.encode_image(arrays[1]), z[1:2], atol=1e-5)
  raw = loaded.encode_image(files, normalize=False)
  np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=-1, keepdims=True), z, atol=1e-5)
  assert not np.allclose(np.linalg.norm(raw, axis=-1), 1.0)
  np.testing.assert_allclose(loaded.encode_image(files[3]), z[3:4], atol=1e-5)


def test_text_similarity_and_the_classifier(loaded):  # pylint: disable=redefined-outer-name
  texts = ["w5 w10", "w6 w7 w13 w8", "w11 w12"]
  zt = loaded.encode_text(texts)
  ids = np.stack([loaded._pre.tokenizer.encode(t, loaded.config.data.text_len) for t in texts])  # pylint: disable=protected-access
  np.testing.assert_array_equal(loaded.preprocess("text", texts), ids)
  img = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  zi = loaded.encode_image(list(img))
  scale = float(np.minimum(np.exp(np.asarray(loaded.params["params"]["logit_scale"])), 100.0))
  np.testing.assert_allclose(loaded.similarity(zi, zt), scale * zi @ zt.T, rtol=1e-5, atol=1e-5)
  # The classifier of one template is its normalized prompt embedding.
  clf = loaded.zero_shot_classifier(["w10", "w13"], templates=["w5 {}"])
  np.testing.assert_allclose(clf, loaded.encode_text(["w5 w10", "w5 w13"]), atol=1e-5)


def test_errors_are_one_line(loaded, tmp_path):  # pylint: disable=redefined-outer-name
  cases = [(LoadError, "no audio modality", lambda: loaded.encode(loaded.modality("audio"), [])),
           (LoadError, "no modality 'depth'", lambda: loaded.encode("depth", [1])),
           (LoadError, "takes strings", lambda: loaded.encode_text([3])),
           (LoadError, "takes PIL images", lambda: loaded.encode_image([object()])),
           (CheckpointError, "no checkpoint", lambda: mmjax.load(str(tmp_path / "nothing")))]
  for error, match, call in cases:
    with pytest.raises(error, match=match) as e:
      call()
    assert "\n" not in str(e.value), str(e.value)


def test_a_sigmoid_model_adds_its_learned_bias(reference, tmp_path):  # pylint: disable=redefined-outer-name
  """A converted SigLIP: similarity = exp(t) cos(a, b) + b, with its own t and b."""
  work = tmp_path / "siglip"
  r = run_entry(["-m", "mmjax.convert", "hf", f"--src={reference('hf_siglip')}",
                 f"--out={work}"])
  assert r.returncode == 0, r.stderr[-2000:]
  model = mmjax.load(str(work))
  zi = model.encode_image(list(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3),
                                                                   dtype=np.uint8)))
  zt = model.encode_text(["w5 w10", "w11"])
  p = model.params["params"]
  t, b = float(np.asarray(p["sigmoid_t"])), float(np.asarray(p["sigmoid_b"]))
  assert b != 0.0
  np.testing.assert_allclose(model.similarity(zi, zt), np.exp(t) * zi @ zt.T + b, rtol=1e-5,
                             atol=1e-4)


@pytest.fixture(scope="module")
def with_inputs(reference):  # pylint: disable=redefined-outer-name
  """The four small reference layouts with image files and the references' own features of
  them and of raw strings (tests/reference/make_reference.py inputs)."""
  return reference("inputs")


@pytest.mark.parametrize("layout", ["hf_clip", "hf_siglip", "open_clip_clip",
                                    "open_clip_siglip"])
def test_a_converted_model_embeds_files_and_strings_as_its_reference(with_inputs, layout,  # pylint: disable=redefined-outer-name
                                                                     tmp_path):
  """encode_image of image files (several sizes; RGB, L, RGBA, P, P with transparency, I;16,
  CMYK) and encode_text of raw strings equal, within 1e-4 absolute per embedding entry, the
  reference's encode_image(preprocess(file)) / get_image_features(**processor(file)) and its
  features of its tokenizer's ids: the converter picks its family's data.image_resize."""
  from mmjax.convert import hf, open_clip, write_workdir  # pylint: disable=import-outside-toplevel
  folder = with_inputs / layout
  if layout.startswith("hf_"):
    config, params = hf.convert(str(folder))
  else:
    tok = with_inputs / ("hf_siglip" if "siglip" in layout else "hf_clip") / "tokenizer.json"
    config, params = open_clip.convert(str(folder / "open_clip.safetensors"), f"hf:{tok}",
                                       config_file=str(folder / "model_config.json"))
  write_workdir(config, params, str(tmp_path / "w"), source=f"{layout}:{folder}")
  model = mmjax.load(str(tmp_path / "w"))
  assert model.config.data.image_resize == {
      "hf_clip": "torchvision", "hf_siglip": "torchvision_squash", "open_clip_clip": "pil",
      "open_clip_siglip": "pil_squash"}[layout]
  assert model.config.data.jpeg_draft is False  # the reference decodes JPEGs in full
  want = np.load(folder / "inputs.npz")
  files = [with_inputs / "images" / f for f in want["files"]]
  z = model.encode_image(files, normalize=False)
  for f, got, ref in zip(want["files"], z, want["image_embeds"]):
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4, err_msg=f"{layout} {f}")
  np.testing.assert_allclose(model.encode_image([Image.open(f) for f in files],
                                                normalize=False), z, rtol=0, atol=1e-6)
  np.testing.assert_allclose(model.encode_text(list(want["texts"]), normalize=False),
                             want["text_embeds"], rtol=0, atol=1e-4, err_msg=layout)


def test_video_and_audio_files_embed_as_the_data_pipeline_reads_them(tmp_path):
  """encode('video', ...) of .npy clips and frame folders and encode('audio', ...) of .wav
  files (another rate) and waveforms are the pipeline's decoded inputs of the same files
  through the same towers: a JSONL manifest of them, batched by make_dataset."""
  from mmjax.data import audio as audio_lib  # pylint: disable=import-outside-toplevel
  from mmjax.data import pipeline  # pylint: disable=import-outside-toplevel
  from tests.test_multi_caption import init_checkpoint  # pylint: disable=import-outside-toplevel
  workdir = init_checkpoint(str(tmp_path / "run"), **{
      "model.modalities": {
          "video": {"kind": "video", "tubelet": (2, 8, 8), "grid": (2, 2, 2),
                    "input_shape": (4, 16, 16, 3)},
          "audio": {"kind": "audio", "patch": (8, 8), "grid": (2, 2), "input_shape": (16, 16)}},
      "data.task": "audio_video", "data.num_frames": 4, "data.audio_frames": 16,
      "data.mel_bins": 16, "data.image_size": 16})
  rng = np.random.default_rng(0)
  rows, videos, audios = [], [], []
  for i in range(4):
    clip = rng.integers(0, 256, (6 + i, 20 + 4 * i, 24, 3), dtype=np.uint8)  # T, H, W vary
    if i % 2:
      path = tmp_path / f"v{i}"
      path.mkdir()
      for t, frame in enumerate(clip):
        Image.fromarray(frame).save(path / f"{t:03d}.png")
    else:
      path = tmp_path / f"v{i}.npy"
      np.save(path, clip)
    wave = rng.normal(0, 0.3, 8000 + 1000 * i).astype(np.float32)
    audio_lib.write_wav(str(tmp_path / f"a{i}.wav"), wave, 8000)
    rows.append({"video": path.name, "audio": f"a{i}.wav", "caption": f"clip {i}"})
    videos.append(path)
    audios.append(tmp_path / f"a{i}.wav")
  (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  model = mmjax.load(workdir)
  shapes = {k: getattr(model.config.data, k) for k in ("task", "num_frames", "audio_frames",
                                                        "mel_bins", "image_size")}
  batch = next(iter(pipeline.make_dataset(
      {**shapes, "source": "jsonl", "jsonl_path": str(tmp_path / "m.jsonl")}, "test",
      global_batch_size=4, seed=0, shuffle=False, repeat=False, num_workers=0)))
  for kind, files in (("video", videos), ("audio", audios)):
    x = model.preprocess(kind, [str(f) for f in files])
    np.testing.assert_array_equal(x, batch[kind], err_msg=kind)
    z = model.encode(kind, files)
    np.testing.assert_allclose(z, model.encode_preprocessed(kind, batch[kind]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    assert np.abs(z[0] - z[1]).max() > 1e-3  # different inputs, different embeddings
  np.testing.assert_allclose(model.encode("video", np.load(videos[0])[None]),
                             model.encode("video", [videos[0]]), atol=1e-6)  # an array too
