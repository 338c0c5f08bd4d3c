"""Ordering pretext tasks (mmjax.ordering): frame order (HERO) and sentence ordering."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import ordering

PAD, CLS, SEP = 0, 1, 2


# ------------------------------------------------------------------------------ frames

@pytest.mark.parametrize("groups,ratio,k", [(8, 0.5, 4), (8, 0.15, 2), (8, 0.0, 2),
                                            (8, 1.0, 8), (5, 0.3, 2), (10, 0.35, 4),
                                            (1, 0.5, 1)])
def test_frame_permutation_counts_and_identity(groups, ratio, k):
  assert ordering.num_shuffled_groups(groups, ratio) == k
  b = 64
  fn = jax.jit(ordering.frame_permutation, static_argnums=(1, 2, 3))
  perm, shuffled = map(np.asarray, fn(jax.random.key(0), b, groups, ratio))
  assert perm.shape == shuffled.shape == (b, groups)
  assert perm.dtype == np.int32 and shuffled.dtype == bool
  np.testing.assert_array_equal(np.sort(perm, 1), np.tile(np.arange(groups), (b, 1)))
  np.testing.assert_array_equal(shuffled.sum(1), k)           # exactly k slots per row
  ident = np.tile(np.arange(groups), (b, 1))
  np.testing.assert_array_equal(perm[~shuffled], ident[~shuffled])  # the rest in place
  for row_p, row_s in zip(perm, shuffled):                    # chosen permute among themselves
    assert set(row_p[row_s]) == set(np.flatnonzero(row_s))
  if k >= 2:
    assert (perm != ident).any()                              # something actually moves
    assert len({tuple(r) for r in perm}) > 1                  # rows differ


def test_frame_permutation_rngs_differ_and_uniform():
  fn = jax.jit(ordering.frame_permutation, static_argnums=(1, 2, 3))
  p0, _ = fn(jax.random.key(0), 16, 6, 0.5)
  p1, _ = fn(jax.random.key(1), 16, 6, 0.5)
  assert not np.array_equal(np.asarray(p0), np.asarray(p1))
  # All groups get chosen about equally often (k = 3 of 6 -> 1/2 each).
  _, s = fn(jax.random.key(2), 4000, 6, 0.5)
  freq = np.asarray(s).mean(0)
  assert np.all(np.abs(freq - 0.5) < 0.04), freq


def test_permute_frames_targets_and_invert():
  b, groups, t, h, w, c = 4, 5, 2, 3, 2, 3
  video = np.random.RandomState(0).randn(b, groups * t, h, w, c).astype(np.float32)
  perm, shuffled = ordering.frame_permutation(jax.random.key(3), b, groups, 0.6)
  perm = np.asarray(perm)
  out = np.asarray(jax.jit(ordering.permute_frames, static_argnums=2)(video, perm, t))
  assert out.shape == video.shape
  for i in range(b):
    for j in range(groups):
      g = perm[i, j]
      np.testing.assert_array_equal(out[i, j * t:(j + 1) * t], video[i, g * t:(g + 1) * t])
  assert not np.array_equal(out, video)
  inv = np.asarray(ordering.invert(perm))
  np.testing.assert_array_equal(np.take_along_axis(perm, inv, 1),
                                np.tile(np.arange(groups), (b, 1)))
  np.testing.assert_array_equal(np.asarray(ordering.permute_frames(out, inv, t)), video)
  # Tubelet tokens (time-major) of the permuted video are the original groups' tokens.
  from mmjax import tokenizers
  tok_in = np.asarray(tokenizers.patchify_video(video, (t, 1, 1))).reshape(b, groups, -1)
  tok_out = np.asarray(tokenizers.patchify_video(out, (t, 1, 1))).reshape(b, groups, -1)
  np.testing.assert_array_equal(tok_out, np.take_along_axis(tok_in, perm[..., None], 1))
  with pytest.raises(ValueError):
    ordering.permute_frames(video, perm, 3)


# ------------------------------------------------------------------------------ text

def _make_text(rng, b, l, lengths):
  ids = rng.randint(3, 10_000, size=(b, l)).astype(np.int32)  # distinct enough to track
  for i, n in enumerate(lengths):
    ids[i, n:] = PAD
    ids[i, 0] = CLS
    ids[i, n - 1] = SEP
  return ids


def _np_chunks(n_body, k):
  """Chunk of each body position, computed independently of the module: floor(i * k / n)."""
  return np.array([(i * k) // n_body for i in range(n_body)])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_segment_permutation_text(k):
  rng = np.random.RandomState(k)
  b, l = 24, 32
  lengths = rng.randint(2, l + 1, size=b)
  lengths[:4] = [2, 3, k + 1, k + 2]          # bodies of 0, 1, k-1 (too short) and k tokens
  lengths[4] = l                              # a full row, no padding
  ids = _make_text(rng, b, l, lengths)
  # Make token ids unique within each row so every token can be traced to its origin.
  ids_u = ids.copy()
  for i, n in enumerate(lengths):
    ids_u[i, 1:n - 1] = 100 + np.arange(n - 2)
  valid = ids_u != PAD

  fn = jax.jit(functools.partial(ordering.segment_permutation, num_segments=k))
  gather, targets, weights = map(np.asarray, fn(jax.random.key(k), valid))
  assert gather.dtype == np.int32 and targets.dtype == np.int32
  assert weights.dtype == np.float32 and gather.shape == (b, l)
  out = np.take_along_axis(ids_u, gather, 1)
  out_orig = np.take_along_axis(ids, gather, 1)
  moved_rows = 0
  for i, n in enumerate(lengths):
    n_body = n - 2
    assert out[i, 0] == CLS and out[i, n - 1] == SEP            # [CLS], [SEP] in place
    np.testing.assert_array_equal(out[i, n:], PAD)              # padding in place
    np.testing.assert_array_equal(gather[i, n - 1:], np.arange(n - 1, l))
    assert gather[i, 0] == 0
    if n_body < k:                                              # too short: untouched
      np.testing.assert_array_equal(gather[i], np.arange(l))
      np.testing.assert_array_equal(weights[i], 0)
      continue
    np.testing.assert_array_equal(weights[i], (np.arange(l) >= 1) & (np.arange(l) < n - 1))
    body_in, body_out = ids_u[i, 1:n - 1], out[i, 1:n - 1]
    np.testing.assert_array_equal(np.sort(body_out), np.sort(body_in))   # same multiset
    np.testing.assert_array_equal(np.sort(out_orig[i, 1:n - 1]), np.sort(ids[i, 1:n - 1]))
    chunk = _np_chunks(n_body, k)
    src_body = body_out - 100                                   # original body index
    np.testing.assert_array_equal(targets[i, 1:n - 1], chunk[src_body])
    assert set(targets[i, 1:n - 1]) == set(range(k))
    # Chunks stay contiguous and in their original inner order in the output.
    t_out = targets[i, 1:n - 1]
    runs = [t_out[0]] + [t for a, t in zip(t_out[:-1], t_out[1:]) if t != a]
    assert sorted(runs) == list(range(k)), runs                 # each chunk one run
    for c in range(k):
      np.testing.assert_array_equal(src_body[t_out == c], np.flatnonzero(chunk == c))
    moved_rows += int(not np.array_equal(body_out, body_in))
  assert moved_rows > 0


def test_segment_permutation_rngs_differ_and_order_uniform():
  l, k, b = 20, 3, 3000
  valid = np.zeros((b, l), bool)
  valid[:, :14] = True
  fn = jax.jit(functools.partial(ordering.segment_permutation, num_segments=k))
  g0, t0, _ = map(np.asarray, fn(jax.random.key(0), valid))
  g1, _, _ = map(np.asarray, fn(jax.random.key(1), valid))
  assert not np.array_equal(g0, g1)
  # The chunk order at the body's first / last position is uniform over the k chunks.
  for p in (1, 12):
    freq = np.bincount(t0[:, p], minlength=k) / b
    assert np.all(np.abs(freq - 1 / k) < 0.04), freq
  # All 3! orders appear about equally often.
  orders = [tuple(dict.fromkeys(row[1:13])) for row in t0]
  counts = np.array([orders.count(o) for o in set(orders)])
  assert len(counts) == 6 and np.all(np.abs(counts / b - 1 / 6) < 0.03), counts


def test_segment_permutation_prefix_suffix_and_holes():
  # num_prefix=2 / num_suffix=0, and a non-contiguous valid mask: the body is the valid
  # positions only, reshuffled into those same positions.
  valid = np.array([[1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0]], bool)
  ids = np.where(valid, np.arange(12) + 10, PAD)
  gather, targets, weights = map(np.asarray, ordering.segment_permutation(
      jax.random.key(5), valid, 2, num_prefix=2, num_suffix=0))
  body = np.array([2, 4, 5, 6, 7, 9])                            # valid minus the first two
  np.testing.assert_array_equal(np.flatnonzero(weights[0]), body)
  out = np.take_along_axis(ids, gather, 1)[0]
  np.testing.assert_array_equal(out[~valid[0]], PAD)
  np.testing.assert_array_equal(out[:2], ids[0, :2])
  np.testing.assert_array_equal(np.sort(out[body]), np.sort(ids[0, body]))
  chunk_of = dict(zip(ids[0, body], _np_chunks(6, 2)))
  np.testing.assert_array_equal(targets[0, body], [chunk_of[x] for x in out[body]])
  with pytest.raises(ValueError):
    ordering.segment_permutation(jax.random.key(0), valid, 0)
