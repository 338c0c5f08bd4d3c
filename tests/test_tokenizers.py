"""Embedders (survey Table 1): shapes, masks, positions that interpolate, [CLS], type, MIM."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import tokenizers as tk
from tests.helpers import apply, init

W = 16
CASES = {
    "text": (tk.TextEmbedder(width=W, vocab_size=50, max_len=8),
             np.array([[1, 7, 9, 2, 0, 0], [1, 5, 2, 0, 0, 0]], np.int32), 6),
    "image": (tk.ImagePatchEmbedder(width=W, patch=4, grid=(2, 2)),
              np.random.RandomState(0).randn(2, 8, 8, 3).astype(np.float32), 5),
    "video": (tk.VideoTubeletEmbedder(width=W, tubelet=(2, 4, 4), grid=(2, 2, 2)),
              np.random.RandomState(1).randn(2, 4, 8, 8, 3).astype(np.float32), 9),
    "audio": (tk.AudioSpectrogramEmbedder(width=W, patch=(4, 4), grid=(4, 2)),
              np.random.RandomState(2).randn(2, 16, 8).astype(np.float32), 9),
    "regions": (tk.RegionEmbedder(width=W),
                {"features": np.random.RandomState(3).randn(2, 5, 12).astype(np.float32),
                 "boxes": np.random.RandomState(4).rand(2, 5, 5).astype(np.float32),
                 "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)}, 6),
    "features": (tk.FeatureEmbedder(width=W, hidden=8, max_len=4),
                 np.random.RandomState(5).randn(2, 7, 3).astype(np.float32), 8),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_shapes_dtypes_jit(kind):
  mod, x, n = CASES[kind]
  params = init(mod, jax.random.key(0), x)
  toks, mask = mod.apply(params, x)  # eager: every op dispatched alone
  tj, mj = jax.jit(mod.apply)(params, x)
  chex.assert_trees_all_close((toks, mask), (tj, mj), atol=1e-6)
  chex.assert_shape(toks, (2, n, W))
  chex.assert_shape(mask, (2, n))
  assert mask.dtype == jnp.bool_ and toks.dtype == jnp.float32
  chex.assert_tree_all_finite(toks)
  # bf16 compute, f32 parameters.
  bf = mod.clone(dtype=jnp.bfloat16)
  tb, _ = apply(bf, params, x)
  assert tb.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(tb, np.float32), np.asarray(toks), atol=0.1)
  # Absent modality: every token masked.
  _, m0 = apply(mod, params, x, valid=jnp.array([False, True]))
  assert not bool(m0[0].any()) and bool(jnp.array_equal(m0[1], mask[1]))


def test_text_mask_and_type_embedding():
  mod, x, _ = CASES["text"]
  params = init(mod, jax.random.key(0), x)
  toks, mask = apply(mod, params, x)
  np.testing.assert_array_equal(np.asarray(mask), x != 0)
  p = params["params"]
  expect = p["token_embedding"].value[x[0, 1]] + p["pos_embedding"].value[1] + \
      p["type_embedding"].value
  np.testing.assert_allclose(np.asarray(toks[0, 1]), np.asarray(expect), atol=1e-6)


def test_learned_positions_interpolate_to_a_new_grid():
  mod = tk.ImagePatchEmbedder(width=W, patch=4, grid=(2, 2))
  zero_small = np.zeros((1, 8, 8, 3), np.float32)
  params = init(mod, jax.random.key(0), zero_small)
  p = params["params"]
  table = p["pos_embedding"].value  # [2, 2, W]
  base = p["type_embedding"].value  # projection of zeros is the (zero) bias
  toks, _ = apply(mod, params, np.zeros((1, 16, 24, 3), np.float32))  # grid 4 x 6
  chex.assert_shape(toks, (1, 1 + 24, W))
  want = jax.image.resize(table, (4, 6, W), "linear").reshape(24, W) + base
  np.testing.assert_allclose(np.asarray(toks[0, 1:]), np.asarray(want), atol=1e-6)
  np.testing.assert_allclose(np.asarray(toks[0, 0]), np.asarray(p["cls"].value + base),
                             atol=1e-6)
  # Same grid: the table itself.
  toks, _ = apply(mod, params, zero_small)
  np.testing.assert_allclose(np.asarray(toks[0, 1:]), np.asarray(table.reshape(4, W) + base),
                             atol=1e-6)


def test_video_clip_length_and_text_length_interpolate():
  mod = tk.VideoTubeletEmbedder(width=W, tubelet=(2, 4, 4), grid=(2, 2, 2))
  params = init(mod, jax.random.key(0), np.zeros((1, 4, 8, 8, 3), np.float32))
  toks, _ = apply(mod, params, np.zeros((1, 8, 8, 8, 3), np.float32))  # twice the clip
  chex.assert_shape(toks, (1, 1 + 4 * 2 * 2, W))
  text = tk.TextEmbedder(width=W, vocab_size=10, max_len=4)
  params = init(text, jax.random.key(0), np.ones((1, 4), np.int32))
  toks, _ = apply(text, params, np.ones((1, 9), np.int32))
  chex.assert_shape(toks, (1, 9, W))


def test_sincos_positions_have_no_parameters_and_differ_per_position():
  mod = tk.ImagePatchEmbedder(width=W, patch=4, grid=(2, 2), pos="sincos", add_cls=False)
  x = np.zeros((1, 16, 16, 3), np.float32)
  params = init(mod, jax.random.key(0), x)
  assert "pos_embedding" not in params["params"]
  toks, _ = apply(mod, params, x)
  flat = np.asarray(toks[0])
  assert len({tuple(np.round(r, 5)) for r in flat}) == 16
  pe = tk.sincos_nd((4, 4), W)
  np.testing.assert_allclose(flat - flat[0], pe - pe[0], atol=1e-6)


def test_patch_order_is_row_major():
  img = np.zeros((1, 8, 12, 1), np.float32)
  for r in range(2):
    for c in range(3):
      img[0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 10 * r + c
  patches = np.asarray(tk.patchify_image(jnp.asarray(img), 4))
  np.testing.assert_array_equal(patches[0, :, 0], [0, 1, 2, 10, 11, 12])
  vid = np.arange(4)[None, :, None, None, None] * np.ones((1, 4, 4, 4, 1))
  np.testing.assert_array_equal(np.asarray(tk.patchify_video(jnp.asarray(vid), (2, 2, 2)))[
      0, ::4, 0], [0, 2])
  spec = np.arange(8)[None, :, None] * np.ones((1, 8, 4))
  np.testing.assert_array_equal(np.asarray(tk.patchify_spectrogram(jnp.asarray(spec), (4, 2)))[
      0, :, 0], [0, 0, 4, 4])


def test_mim_mask_replaces_tokens():
  mod, x, _ = CASES["image"]
  params = init(mod, jax.random.key(0), x, mim_mask=np.zeros((2, 4), bool))
  mim = np.array([[True, False, False, True], [False] * 4])
  masked, _ = apply(mod, params, x, mim_mask=mim)
  clean, _ = apply(mod, params, x)
  np.testing.assert_allclose(np.asarray(masked[1]), np.asarray(clean[1]))
  np.testing.assert_allclose(np.asarray(masked[0, 2]), np.asarray(clean[0, 2]))
  # A masked token no longer depends on its pixels.
  x2 = x.copy()
  x2[0, :4, :4] += 5.0
  m2, _ = apply(mod, params, x2, mim_mask=mim)
  np.testing.assert_allclose(np.asarray(m2[0, 1]), np.asarray(masked[0, 1]), atol=1e-6)


def test_regions_sum_features_and_boxes_and_keep_mask():
  mod, x, _ = CASES["regions"]
  params = init(mod, jax.random.key(0), x)
  toks, mask = apply(mod, params, x)
  np.testing.assert_array_equal(np.asarray(mask[:, 1:]), x["mask"])
  x2 = {**x, "boxes": x["boxes"] + 1.0}
  toks2, _ = apply(mod, params, x2)
  assert float(jnp.max(jnp.abs(toks2[:, 1:] - toks[:, 1:]))) > 1e-3


def test_feature_sets_without_positions_are_permutation_equivariant():
  mod = tk.FeatureEmbedder(width=W, use_positions=False, add_cls=False)
  x = np.random.RandomState(0).randn(1, 5, 3).astype(np.float32)
  params = init(mod, jax.random.key(0), x)
  perm = np.array([3, 1, 4, 0, 2])
  a, _ = apply(mod, params, x)
  b, _ = apply(mod, params, x[:, perm])
  np.testing.assert_allclose(np.asarray(a[:, perm]), np.asarray(b), atol=1e-6)


def test_clear_errors():
  mod, x, _ = CASES["image"]
  with pytest.raises(ValueError, match="not divisible by the patch size"):
    init(mod, jax.random.key(0), np.zeros((1, 9, 8, 3), np.float32))
  with pytest.raises(ValueError, match="image input must be"):
    init(mod, jax.random.key(0), np.zeros((9, 8, 3), np.float32))
  with pytest.raises(ValueError, match="text input must be int ids"):
    CASES["text"][0].init(jax.random.key(0), np.zeros((1, 4), np.float32))
  with pytest.raises(ValueError, match="unknown kind 'smell'"):
    tk.build_embedder("smell", "nose", 8, jnp.float32, jnp.float32)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['patchsize'\]"):
    tk.build_embedder("image", "image", 8, jnp.float32, jnp.float32, patchsize=4)
