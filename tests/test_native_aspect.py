"""Native aspect (data.max_patches, NaFlex): images resized keeping their aspect to the largest
patch grid within the budget, fed as patch rows with their grid; positions resized per
example as the square path resizes them; padding masked; one-line errors where the model
cannot take patch rows. (Training and evaluating on mixed-aspect files: test_native_aspect_run.)"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax import config_lib, configure, models, tokenizers
from mmjax.data import decode, pipeline
from tests.helpers import apply, init, tiny_config


@pytest.mark.parametrize("h,w,n,grid", [(100, 100, 16, (4, 4)), (100, 300, 64, (4, 12)),
                                        (300, 100, 64, (12, 4)), (50, 100, 32, (4, 8)),
                                        (10, 1000, 16, (1, 16)), (224, 224, 196, (14, 14)),
                                        (480, 640, 256, (14, 18)), (16, 32, 16, (3, 5))])
def test_native_grid_keeps_the_aspect_within_the_budget(h, w, n, grid):
  gh, gw = decode.native_grid(h, w, n)
  assert (gh, gw) == grid and gh * gw <= n
  for hh, ww in ((1, 3), (3, 1), (2, 3), (9, 16), (1, 1)):  # any aspect: within one patch
    for budget in (16, 64, 256, 729):
      gh, gw = decode.native_grid(hh * 40, ww * 40, budget)
      assert gh * gw <= budget and gh * gw >= budget * 0.6, (hh, ww, budget, gh, gw)
      assert abs(gh * ww / hh - gw) <= 1 + ww / hh, (hh, ww, budget, gh, gw)
      assert decode.native_grid(ww * 40, hh * 40, budget) == (gw, gh)  # symmetric


def test_patch_rows_cut_as_the_embedder_cuts_and_pad_with_zeros():
  img = np.random.RandomState(0).rand(8, 12, 3).astype(np.float32)
  rows, grid = decode.patch_rows(img, 4, 10)
  assert rows.shape == (10, 48) and tuple(grid) == (2, 3)
  np.testing.assert_array_equal(rows[:6], np.asarray(tokenizers.patchify_image(img[None], 4))[0])
  assert not rows[6:].any()
  with pytest.raises(ValueError, match="not a grid of at most 5 patches"):
    decode.patch_rows(img, 4, 5)


def test_a_file_keeps_its_aspect_no_crop(tmp_path):
  """A 3:1 PNG at budget 16 of 4 x 4 patches: a 2 x 6 grid, the pixels PIL's bicubic resize
  of the whole image to 8 x 24 gives (nothing cropped)."""
  arr = np.random.RandomState(1).randint(0, 256, (30, 90, 3)).astype(np.uint8)
  Image.fromarray(arr).save(tmp_path / "wide.png")
  img = decode.native_image(str(tmp_path / "wide.png"), 4, 16)
  assert img.shape == (8, 24, 3)
  want = np.asarray(Image.fromarray(arr).resize((24, 8), Image.BICUBIC)) / 255.0
  np.testing.assert_allclose(img, want, atol=1e-6)
  tv = decode.native_image(arr, 4, 16, recipe="torchvision")
  np.testing.assert_allclose(tv, decode.aa_bicubic_uint8(arr, 8, 24) / 255.0, atol=1e-6)


def _embedder(pos, grid=(4, 4)):
  return tokenizers.ImagePatchEmbedder(width=16, patch=4, grid=grid, pos=pos)


@pytest.mark.parametrize("pos", ["learned", "sincos"])
@pytest.mark.parametrize("side", [4, 2, 6])  # the table's grid, shrunk, enlarged
def test_a_square_image_as_patch_rows_equals_the_square_path(pos, side):
  emb = _embedder(pos)
  x = jax.random.normal(jax.random.key(0), (2, 4 * side, 4 * side, 3))
  params = init(emb, jax.random.key(1), x)
  square, _ = apply(emb, params, x)
  rows = np.zeros((2, 40, 48), np.float32)
  rows[:, :side * side] = np.asarray(tokenizers.patchify_image(x, 4))
  grid = np.full((2, 2), side, np.int32)
  native, mask = apply(emb, params, jnp.asarray(rows), patch_grid=jnp.asarray(grid))
  assert native.shape == (2, 41, 16)
  np.testing.assert_array_equal(np.asarray(mask[:, 1:]),
                                np.broadcast_to(np.arange(40) < side * side, (2, 40)))
  np.testing.assert_allclose(native[:, :1 + side * side], square, atol=2e-6)


def _leaf(params, *path):
  x = params["params"]
  for k in path:
    x = x[k]
  return np.asarray(getattr(x, "value", x))


@pytest.mark.parametrize("pos", ["learned", "sincos"])
def test_each_example_gets_its_own_grids_positions(pos):
  """Two examples of different aspect in one batch (zero pixels: a token is its bias +
  position + type): the learned table resized to each one's grid as jax.image.resize does,
  sin-cos at each one's (row, col)."""
  grids = np.asarray([[2, 6], [5, 3]], np.int32)
  emb = _embedder(pos)
  params = init(emb, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  got = np.asarray(apply(emb, params, jnp.zeros((2, 16, 48)), patch_grid=jnp.asarray(grids))[0])
  offset = _leaf(params, "proj", "bias") + _leaf(params, "type_embedding")
  for b, (gh, gw) in enumerate(grids):
    if pos == "learned":
      want = jax.image.resize(_leaf(params, "pos_embedding"), (gh, gw, 16), "linear")
      want = np.asarray(want).reshape(-1, 16)
    else:
      want = tokenizers.sincos_nd((gh, gw), 16)
    np.testing.assert_allclose(got[b, 1:1 + gh * gw] - offset, want, atol=2e-6)


def _native_cfg(fusion="dual_encoder", **kw):
  c = tiny_config(fusion, **{"data.image_size": 16, "data.max_patches": 20,
                             "loss_weights.mim": 0.0, **kw})
  return configure.resolve(c)


@pytest.mark.parametrize("fusion", ["dual_encoder", "hier_multi_to_one", "cross_attention"])
def test_padding_and_other_examples_do_not_change_an_embedding(fusion):
  """The model's output for example 0 is the same whatever its padding rows hold and whatever
  grid the other example has: padding is masked everywhere."""
  cfg = _native_cfg(fusion)
  model = models.build_model(cfg)
  params = init(model, jax.random.key(0), models.dummy_batch(cfg, 2), method=model.init_all)
  rng = np.random.RandomState(0)
  rows = rng.randn(2, 20, 48).astype(np.float32)
  text = np.asarray(models.dummy_batch(cfg, 2)["text"])
  text[:, :5] = 7
  grid = np.asarray([[3, 5], [4, 4]], np.int32)
  a = apply(model, params, {"image": rows, "image_patch_grid": grid, "text": text})
  rows2 = rows.copy()
  rows2[0, 15:] = 100.0  # example 0's padding
  rows2[1] = rng.randn(20, 48)
  b = apply(model, params, {"image": rows2, "image_patch_grid": np.asarray([[3, 5], [2, 9]]),
                            "text": text})
  take0 = lambda t: jax.tree.map(lambda x: np.asarray(x)[0] if np.ndim(x) and len(x) == 2 else x, t)
  chex.assert_trees_all_close(take0(a["pooled"] if "pooled" in a else a),
                              take0(b["pooled"] if "pooled" in b else b), atol=1e-5)


def test_patch_dropout_drops_padding_first():
  """Native-aspect rows with patch dropout keep the example's own patches before padding."""
  emb = tokenizers.ImagePatchEmbedder(width=8, patch=4, grid=(4, 4), patch_dropout=0.5)
  params = init(emb, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  rows = jax.random.normal(jax.random.key(1), (4, 16, 48))
  grid = jnp.asarray([[2, 3]] * 4)  # 6 real patches of 16 rows; 8 kept
  out, mask = emb.apply(params, rows, patch_grid=grid, rngs={"dropout": jax.random.key(2)})
  assert out.shape == (4, 9, 8) and np.asarray(mask[:, 1:]).sum(axis=1).tolist() == [6] * 4


def test_the_builtin_scenes_come_as_patch_rows_of_their_own_grid():
  cfg = _native_cfg()
  assert cfg.data.patch_size == 4  # filled from the image modality's patch
  batch = next(iter(pipeline.make_dataset(cfg.data, "train", global_batch_size=4, seed=0)))
  assert batch["image"].shape == (4, 20, 48) and batch["image_patch_grid"].tolist() == [[4, 4]] * 4
  square = pipeline.make_dataset(tiny_config("dual_encoder", **{"data.image_size": 16}).data,
                                 "train", global_batch_size=4, seed=0)
  img = next(iter(square))["image"]
  np.testing.assert_array_equal(batch["image"][:, :16],
                                np.asarray(tokenizers.patchify_image(img, 4)))


@pytest.mark.parametrize("over,needle", [
    ({"data.patch_size": 8}, "data.patch_size=8 differs from the image modality's patch 4"),
    ({"model.fusion": "early_sum", "model.early_sum_align": "pad"},
     "data.max_patches with fusion early_sum"),
    ({"loss_weights.mim": 1.0}, "masked image modelling reads square images"),
    ({"data.max_patches": 8}, "does not fit data.max_patches=8; raise max_patches to 16"),
    ({"data.max_patches": -1}, "must be >= 0"),
    ({"data.max_patches": 0, "objectives.pack_images": True}, "data.max_patches=0 feeds square"),
    ({"objectives.pack_images": True, "objectives.image_pack_len": 12},
     "image_pack_len=12 is shorter than one image's 21 token slots"),
    ({"objectives.pack_images": True, "model.patch_dropout": 0.5}, "with patch dropout"),
    ({"objectives.pack_images": True, "model.fusion": "early_concat",
      "model.depth.unimodal": 0, "loss_weights.contrastive": 0.0},
     "fusion early_concat has none here")])
def test_what_the_model_cannot_take_is_one_clear_error(over, needle):
  c = tiny_config("hier_multi_to_one", **{"data.image_size": 16, "data.max_patches": 20,
                                         "loss_weights.mim": 0.0})
  for k, v in over.items():
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  with pytest.raises(config_lib.ConfigError, match=needle):
    configure.resolve(c)


def _grids_batch(cfg, grids, seed=0):
  """A native-aspect batch: random patch rows (zero padding) of `grids`, random text."""
  rng = np.random.RandomState(seed)
  b, n = len(grids), cfg.data.max_patches
  rows = np.zeros((b, n, 48), np.float32)
  for i, (gh, gw) in enumerate(grids):
    rows[i, :gh * gw] = rng.randn(gh * gw, 48)
  text = rng.randint(5, 200, (b, 12)).astype(np.int32)
  text[:, 0] = 1
  text[:, 8:] = 0
  return {"image": rows, "image_patch_grid": np.asarray(grids, np.int32), "text": text}


GRIDS = [(2, 6), (3, 5), (4, 4), (5, 3), (6, 2), (1, 4), (2, 2), (3, 3)]


@pytest.mark.parametrize("fusion,rows,row_len", [("dual_encoder", 8, 0), ("dual_encoder", 6, 0),
                                                 ("hier_multi_to_one", 3, 42)])
def test_a_packed_image_tower_gives_the_unpacked_loss_and_gradients(fusion, rows, row_len,
                                                                    monkeypatch):
  """objectives.pack_images: 8 images of 4 to 16 patches (1 + 20 slots each) in `rows` rows of
  `row_len` slots (0: 21); the loss, metrics and every gradient equal the padded batch's."""
  from mmjax import objectives, packing, sharding  # pylint: disable=import-outside-toplevel
  cfg = _native_cfg(fusion, **{"loss_weights.itm": 0.0, "loss_weights.mlm": 0.0,
                               "objectives.pack_images": True,
                               "objectives.image_pack_rows": rows,
                               "objectives.image_pack_len": row_len})
  model = models.build_model(cfg)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  params = init(model, jax.random.key(0), models.dummy_batch(cfg, 2), method=model.init_all)
  batch = _grids_batch(cfg, GRIDS)
  packed = packing.add_image_pack_index(batch, cfg.model, rows, row_len)
  assert packed["image_pack_index"].shape == (rows, row_len or 21)
  fill = packing.padding_fraction(batch, cfg.model, rows, row_len)
  assert fill["image"] == pytest.approx(1 - (8 + sum(a * b for a, b in GRIDS)) / (8 * 21))
  assert fill["image_packed"] == pytest.approx(
      1 - (8 + sum(a * b for a, b in GRIDS)) / (rows * (row_len or 21)))
  loss = jax.jit(jax.value_and_grad(lambda p, b: objectives.pretraining_loss(
      model, p, b, jax.random.key(1), cfg.objectives, mesh), has_aux=True))
  (want, want_m), want_g = loss(params, batch)
  (got, got_m), got_g = loss(params, packed)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  chex.assert_trees_all_close(got_m, want_m, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got_g, want_g, rtol=1e-4, atol=1e-5)
  # the packed tower is what ran, its segments keeping the images apart: one segment per
  # row lets a row's images attend to each other, another loss
  one_segment = lambda index, length: (jnp.where(index >= 0, 1, 0), None)
  monkeypatch.setattr(packing, "index_segments", one_segment)
  mixed = jax.jit(lambda p, b: objectives.pretraining_loss(
      model, p, b, jax.random.key(1), cfg.objectives, mesh)[0])
  assert abs(float(mixed(params, packed)) - float(want)) > 1e-4


def test_too_few_packed_rows_is_one_line_through_train_py(tmp_path):
  from tests.helpers import run_entry  # pylint: disable=import-outside-toplevel
  r = run_entry(["train.py", "--config=tests/tiny_config.py", f"--workdir={tmp_path}",
                 "--config.model.fusion=dual_encoder", "--config.loss_weights.itm=0",
                 "--config.loss_weights.mlm=0", "--config.loss_weights.mim=0",
                 "--config.data.max_patches=16", "--config.objectives.pack_images=True",
                 "--config.objectives.image_pack_rows=4", "--config.batch_size=8",
                 "--config.total_steps=2"])
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: ") and "needs 8 packed rows" in line and \
      "objectives.image_pack_rows" in line, line


def test_min_patches_draws_a_budget_per_training_example(tmp_path):
  """data.min_patches: training examples get budgets drawn from [min, max] (the same for one
  example every time it is read), evaluation always max_patches."""
  from mmjax.data import config as data_config  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "sq.png")
  (tmp_path / "m.jsonl").write_text('{"image": "sq.png"}\n')
  cfg = data_config.resolve({"source": "jsonl", "jsonl_path": str(tmp_path / "m.jsonl"),
                             "max_patches": 64, "min_patches": 16, "patch_size": 4})
  train, test = decode.Preprocessor(cfg, "train"), decode.Preprocessor(cfg, "test")
  budgets = [train.patch_budget(i) for i in range(200)]
  assert min(budgets) >= 16 and max(budgets) <= 64 and len(set(budgets)) > 20
  assert budgets == [train.patch_budget(i) for i in range(200)]
  assert {test.patch_budget(i) for i in range(20)} == {64}
  grids = [tuple(train(i, {"image": str(tmp_path / "sq.png")})["image_patch_grid"])
           for i in range(5)]
  assert [g[0] * g[1] for g in grids] == [int(np.sqrt(b)) ** 2 for b in budgets[:5]]
  with pytest.raises(ValueError, match="data.min_patches=80 must be in"):
    data_config.resolve({"max_patches": 64, "min_patches": 80})


def test_robustness_corrupts_the_image_a_patch_row_set_cuts():
  """The robustness evaluator on native-aspect rows corrupts each image at its own grid (an
  occlusion is a square of the image, not of the rows) and leaves the padding zero."""
  from mmjax.evaluators import corruptions, robustness  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(0)
  img = rng.rand(8, 24, 3).astype(np.float32)
  rows, grid = decode.patch_rows(img, 4, 16)
  np.testing.assert_array_equal(decode.rows_image(rows, grid), img)
  batch = {"image": rows[None], "image_patch_grid": grid[None], "index": np.asarray([3])}
  fn = robustness._corrupt("image", corruptions.get("occlusion"), 3, 0, None)  # pylint: disable=protected-access
  out = fn(batch)["image"][0]
  want = corruptions.get("occlusion").apply(
      img, corruptions.get("occlusion").params[2],
      corruptions.rng_for(0, "occlusion/image", 3, 3))
  np.testing.assert_array_equal(out, decode.patch_rows(want, 4, 16)[0])
  assert not out[12:].any() and (decode.rows_image(out, grid) == 0).any()


def test_packed_image_rows_must_split_over_the_batch_shards():
  c = tiny_config("dual_encoder", **{"data.image_size": 16, "data.max_patches": 20,
                                    "loss_weights.mim": 0.0, "objectives.pack_images": True,
                                    "objectives.image_pack_rows": 6, "mesh.data": 4})
  with pytest.raises(config_lib.ConfigError, match="image_pack_rows=6 is not divisible by the "
                     "4 batch shards"):
    configure.check_mesh(configure.resolve(c), 4)
  c.objectives.image_pack_rows = 4
  assert configure.check_mesh(configure.resolve(c), 4)[0] == 4
