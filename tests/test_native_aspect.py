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
    ({"data.max_patches": -1}, "must be >= 0")])
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
