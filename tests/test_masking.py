"""BERT masking statistics, MAE patch masks, and the patch layout (mmjax.tokenizers)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import masking, tokenizers

SPECIALS = (0, 1, 2, 3)  # PAD, CLS, SEP, MASK
MASK_ID = 3


def test_bert_mask_80_10_10_statistics():
  rng = np.random.RandomState(0)
  b, l, vocab = 64, 512, 1000
  ids = rng.randint(4, vocab, size=(b, l)).astype(np.int32)
  lengths = rng.randint(l // 4, l, size=b)
  valid = np.arange(l)[None] < lengths[:, None]
  ids[~valid] = 0
  ids[:, 0] = 1
  ids[np.arange(b), lengths - 1] = 2
  ids[:, 10:20] = rng.randint(4, vocab, size=(b, 10))  # some valid-looking ids ...
  valid[:, 15:20] = False  # ... that the valid mask excludes

  fn = jax.jit(functools.partial(masking.bert_mask, mask_id=MASK_ID, vocab_size=vocab,
                                 special_ids=SPECIALS))
  masked, targets, weights = map(np.asarray, fn(jax.random.key(0), ids, valid_mask=valid))
  assert masked.dtype == ids.dtype and weights.dtype == np.float32
  np.testing.assert_array_equal(targets, ids)
  chosen = weights > 0
  eligible = valid & ~np.isin(ids, SPECIALS)
  assert not (chosen & ~eligible).any()  # specials and invalid positions never selected
  n = eligible.sum(1)
  np.testing.assert_array_equal(chosen.sum(1), np.maximum(1, np.floor(0.15 * n + 0.5)))
  np.testing.assert_array_equal(masked[~chosen], ids[~chosen])  # the rest untouched

  total = chosen.sum()
  frac_mask = (masked[chosen] == MASK_ID).sum() / total
  frac_random = ((masked[chosen] != MASK_ID) & (masked[chosen] != ids[chosen])).sum() / total
  frac_same = (masked[chosen] == ids[chosen]).sum() / total
  assert total > 3000
  assert abs(frac_mask - 0.8) < 0.02
  assert abs(frac_random - 0.1) < 0.015
  assert abs(frac_same - 0.1) < 0.015
  rand_tokens = masked[chosen & (masked != MASK_ID) & (masked != ids)]
  assert not np.isin(rand_tokens, SPECIALS).any() and rand_tokens.max() < vocab
  # Random replacements cover the non-special vocabulary roughly uniformly.
  assert len(np.unique(rand_tokens)) > 0.3 * min(len(rand_tokens), vocab)


def test_bert_mask_empty_rows_and_defaults():
  ids = jnp.array([[1, 2, 0, 0], [1, 7, 8, 2]], jnp.int32)
  masked, _, w = masking.bert_mask(jax.random.key(1), ids, mask_id=3, vocab_size=10,
                                   special_ids=SPECIALS, valid_mask=ids != 0)
  np.testing.assert_array_equal(np.asarray(w).sum(1), [0, 1])  # no candidates -> nothing
  np.testing.assert_array_equal(masked[0], ids[0])
  _, _, w = masking.bert_mask(jax.random.key(1), jnp.arange(40).reshape(2, 20), mask_id=3,
                              vocab_size=40)
  np.testing.assert_array_equal(np.asarray(w).sum(1), [3, 3])


def test_random_patch_mask_exact_counts():
  m = np.asarray(jax.jit(masking.random_patch_mask, static_argnums=(1, 2, 3))(
      jax.random.key(2), 16, 49, 0.75))
  assert m.dtype == np.bool_ and m.shape == (16, 49)
  np.testing.assert_array_equal(m.sum(1), round(0.75 * 49))
  assert len({r.tobytes() for r in m}) == 16  # rows differ

  valid = np.arange(49)[None] < np.array([49, 30, 10, 1])[:, None]
  m = np.asarray(masking.random_patch_mask(jax.random.key(3), 4, 49, 0.5, valid_mask=valid))
  assert not (m & ~valid).any()
  np.testing.assert_array_equal(m.sum(1), np.floor(0.5 * valid.sum(1) + 0.5))


def test_random_patch_mask_is_uniform():
  keys = jax.random.split(jax.random.key(4), 2000)
  m = np.asarray(jax.vmap(lambda k: masking.random_patch_mask(k, 1, 10, 0.3))(keys))[:, 0]
  np.testing.assert_allclose(m.mean(0), 0.3, atol=0.04)


# ------------------------------------------------------------------------------ patch layout


def test_patchify_order():
  b, h, w, c, p = 2, 6, 4, 3, 2
  x = np.random.RandomState(5).randn(b, h, w, c).astype(np.float32)
  out = np.asarray(tokenizers.patchify_image(x, p))
  assert out.shape == (b, (h // p) * (w // p), p * p * c)
  for i in range(h // p):
    for j in range(w // p):
      np.testing.assert_array_equal(out[:, i * (w // p) + j],
                                    x[:, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(b, -1))
  assert tokenizers.patchify_image(x, (3, 2)).shape == (b, 4, 18)
  with pytest.raises(ValueError, match="not divisible"):
    tokenizers.patchify_image(x, 4)


def test_video_and_spectrogram_patch_order():
  rng = np.random.RandomState(6)
  v = rng.randn(2, 4, 4, 6, 3).astype(np.float32)
  out = np.asarray(tokenizers.patchify_video(v, (2, 2, 3)))
  assert out.shape == (2, 2 * 2 * 2, 2 * 2 * 3 * 3)
  k = 0
  for ti in range(2):
    for i in range(2):
      for j in range(2):
        ref = v[:, 2 * ti:2 * ti + 2, 2 * i:2 * i + 2, 3 * j:3 * j + 3].reshape(2, -1)
        np.testing.assert_array_equal(out[:, k], ref)
        k += 1
  s = rng.randn(2, 8, 6).astype(np.float32)
  out = np.asarray(tokenizers.patchify_spectrogram(s, (4, 3)))
  assert out.shape == (2, 4, 12)
  np.testing.assert_array_equal(out[:, 1], s[:, 0:4, 3:6].reshape(2, -1))
  np.testing.assert_array_equal(out[:, 2], s[:, 4:8, 0:3].reshape(2, -1))

