"""Native aspect end to end, as a user runs it: a JSONL set of mixed-aspect images (3:1 to 1:3)
trains through train.py with data.max_patches (no square resize, no crop; the image tower on
packed rows), and eval.py scores
the one checkpoint at three patch budgets in one call (--suite)."""
import json

import numpy as np
import pytest
from PIL import Image

from mmjax.data import builtin, decode
from tests.helpers import run_entry

NAMES = builtin.class_names("image_text")
MEAN, STD = builtin.PIXEL_STATS["image_text"]
PIXELS = (f"--config.data.image_mean={MEAN},{MEAN},{MEAN}",
          f"--config.data.image_std={STD},{STD},{STD}")
# (rows, cols) of 16 x 16 built-in scenes tiled into one image: 3:1 to 1:3
TILINGS = ((1, 3), (1, 2), (1, 1), (2, 1), (3, 1))


def _write(d, split, n):
  """n built-in scenes of `split`, each tiled into a mixed-aspect PNG, and their manifest."""
  src = builtin.BuiltinSource("image_text", split, size=n, image_size=16)
  (d / split).mkdir()
  rows = []
  for i in range(n):
    ex = src[i]
    img = np.clip(np.round((ex["image"] * STD + MEAN) * 255), 0, 255).astype(np.uint8)
    r, c = TILINGS[i % len(TILINGS)]
    Image.fromarray(np.tile(img, (r, c, 1))).save(d / split / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": NAMES[int(ex["label"])],
                 "label": int(ex["label"])})
  (d / split / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
  return d / split / "m.jsonl"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  d = tmp_path_factory.mktemp("mixed")
  return d, _write(d, "train", 320), _write(d, "test", 60)


def test_mixed_aspect_trains_and_evaluates_at_three_budgets(mixed):
  d, train, test = mixed
  workdir = d / "run"
  r = run_entry(["train.py", "--config=tests/tiny_config.py", f"--workdir={workdir}",
                 "--config.model.fusion=dual_encoder", "--config.loss_weights.itm=0",
                 "--config.loss_weights.mlm=0", "--config.loss_weights.mim=0",
                 "--config.data.source=jsonl", f"--config.data.jsonl_path={train}",
                 f"--config.data.jsonl_eval_path={test}", "--config.data.max_patches=16",
                 # the image tower packed: rows of 4 images' 17 slots, 9 rows for 32 images
                 "--config.objectives.pack_images=True", "--config.objectives.image_pack_len=68",
                 "--config.objectives.image_pack_rows=9",
                 *PIXELS, "--config.batch_size=32", "--config.total_steps=40",
                 "--config.optimizer.warmup_steps=5", "--config.optimizer.learning_rate=3e-3",
                 "--config.eval.every_steps=0", "--config.log_every_steps=40"])
  assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  saved = json.load(open(next((workdir / "checkpoints").glob("*/config/metadata"))))
  assert saved["data"]["max_patches"] == 16
  for tiling in TILINGS:  # the aspect is kept: a 3:1 image is a 2 x 6 grid of patches
    assert decode.native_grid(16 * tiling[0], 16 * tiling[1], 16) == {
        (1, 3): (2, 6), (1, 2): (3, 5), (1, 1): (4, 4), (2, 1): (5, 3), (3, 1): (6, 2)}[tiling]
  suite = d / "budgets.py"
  suite.write_text("def get_config():\n  return {'sets': [\n" + "".join(
      f"    {{'name': 'patches_{n}', 'data': {{'max_patches': {n}, 'class_names': {NAMES!r}, "
      f"'prompt_templates': ['{{}}']}}, 'evaluators': 'zero_shot'}},\n" for n in (9, 16, 36))
      + "  ]}\n")
  r = run_entry(["eval.py", f"--workdir={workdir}", f"--suite={suite}", f"--out={d / 'out'}"])
  assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  res = json.load(open(d / "out" / "results.json"))["sets"]
  acc = {n: res[f"patches_{n}"]["zero_shot/accuracy"] for n in (9, 16, 36)}
  chance = res["patches_16"]["zero_shot/chance"]
  assert all(res[f"patches_{n}"]["zero_shot/examples"] == 60 for n in (9, 16, 36)), res
  assert acc[16] >= 2.5 * chance, acc  # trained at 16 patches: well above chance
  assert len(set(acc.values())) > 1, acc  # each budget is its own input


def test_bench_packs_more_images_into_the_same_slots():
  """mmjax.bench.native_aspect on the tiny model: square, padded and packed at equal image
  slots per step; packing holds more images with less padding."""
  r = run_entry(["-m", "mmjax.bench.native_aspect", "--config=tests/tiny_config.py",
                 "--config.model.fusion=dual_encoder", "--config.loss_weights.itm=0",
                 "--config.loss_weights.mlm=0", "--config.loss_weights.mim=0",
                 "--config.batch_size=16", "--steps=1", "--warmup=0", "--repeats=1"])
  assert r.returncode == 0, r.stderr[-3000:]
  rows = {x["variant"]["images"]: x for x in json.loads(r.stdout.strip().splitlines()[-1])}
  assert set(rows) == {"square", "padded", "packed"}
  assert len({x["image_slots"] for x in rows.values()}) == 1  # 16 x 17 slots each
  assert rows["square"]["padding"] == 0 and rows["padded"]["padding"] > 0.2
  assert rows["packed"]["examples"] > 16 and rows["packed"]["padding"] < rows["padded"]["padding"]
  assert all(x["step_s"] > 0 and x["all_tokens_per_s"] > x["real_tokens_per_s"]
             for x in rows.values())


def test_load_encodes_files_at_native_aspect_as_the_pipeline_does(mixed):
  """mmjax.load on the native-aspect checkpoint: encode_image of the files equals the
  embeddings of the pipeline's own batch of them (patch rows and grids alike)."""
  import mmjax  # pylint: disable=import-outside-toplevel
  from mmjax.data import pipeline  # pylint: disable=import-outside-toplevel
  d, _, test = mixed
  model = mmjax.load(str(d / "run"))
  batch = next(iter(pipeline.make_dataset(model.config.data, "test", global_batch_size=5,
                                          seed=0, shuffle=False, repeat=False)))
  files = [str(test.parent / f"{i}.png") for i in batch["index"]]
  pre = model.preprocess("image", files)
  np.testing.assert_array_equal(pre["image_patch_grid"], batch["image_patch_grid"])
  np.testing.assert_allclose(pre["image"], batch["image"], atol=1e-6)
  np.testing.assert_allclose(model.encode_image(files), model.encode_preprocessed(
      "image", {"image": batch["image"], "image_patch_grid": batch["image_patch_grid"]}),
                             atol=1e-5)
