"""Modality tokenizers / embedders (survey Table 1): modality -> (tokens [B, N, D], mask [B, N]).

Every embedder computes token embedding + position embedding + modality-type embedding, summed
element-wise (the simplest early fusion), and optionally prepends a learned [CLS] token.
Positions are learned tables or fixed sin-cos (1D/2D/3D); learned tables are stored at the
configured grid and interpolated to another grid or clip length at apply time.

Patch order (the one patch extraction of mmjax: embedders and MIM targets both use
`patchify_*`, so token n of an embedder is patch n of the target): patches are numbered
row-major over the patch grid -- time first, then height, then width (spectrograms: time, then
frequency); inside a patch the values are flattened row-major in the same order with channels
last: image (dy, dx, c), video (dt, dy, dx, c), audio (dt, df).

Options that published architectures need (all off by default):
  type_embedding  False: no modality-type vector (CLIP, SigLIP have none)
  cls_position    True: the [CLS] token gets a learned position of its own (CLIP's table
                  covers [CLS] + patches; stored as `cls_pos` beside the patch grid)
  pre_norm        True: LayerNorm on the finished tokens before the tower (CLIP's ln_pre)
  patch_bias      False: the patch projection has no bias (CLIP's conv1)
  mim_token       False: no learned [MASK] embedding (models trained without MIM)

Optional arguments every embedder takes:
  valid    [B] bool       this example has the modality (False = absent: all tokens masked)
  mim_mask [B, N] bool    patch embedders only: replace these tokens by a learned [MASK] embedding

Patch dropout (patch embedders, `patch_dropout` = r > 0; FLIP, Li et al. 2023): in training
(an apply with a 'dropout' rng) and without a MIM mask, each example keeps a random
N - round(r N) of its N patch tokens (`kept_patches`), positions already added, in patch order; [CLS] is kept.
Evaluation encodes every patch. Images may keep a structured subset instead
(`patch_dropout_mode`: grid, a lattice; block, one contiguous block; `structured_order`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence, Tuple, Union

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import layers

PATCH_KINDS = ("image", "video", "audio")  # the kinds cut into patches (masked modelling)


# ----------------------------------------------------------------------------- patches

def kept_patches(n: int, rate: float) -> int:
  """Patch tokens left of n after patch dropout at `rate` (at least one): round(rate n) are
  dropped, rounded half up as masking.random_patch_mask counts its masked patches."""
  return max(1, n - int(math.floor(n * rate + 0.5)))


def drop_patches(rng, tokens, mask, rate: float, order=None):
  """tokens [B, N, D], mask [B, N] -> [B, K, D], [B, K], K = kept_patches(N, rate): per example
  a uniformly random subset of the tokens, in their original order; tokens the mask holds
  (native-aspect patches) are kept before padding. order [B, N] in [0, 2) (structured
  dropout, `structured_order`): tokens of lower order are kept first, ties at random."""
  b, n = mask.shape
  u = jax.random.uniform(rng, (b, n))
  score = 4.0 * (~mask).astype(jnp.float32) + (u if order is None else order + 1e-3 * u)
  keep = jnp.sort(jnp.argsort(score, axis=1)[:, :kept_patches(n, rate)], axis=1)
  return (jnp.take_along_axis(tokens, keep[..., None], axis=1),
          jnp.take_along_axis(mask, keep, axis=1))


DROPOUT_MODES = ("random", "grid", "block")  # ImagePatchEmbedder.patch_dropout_mode


def structured_order(rng, rows, cols, patch_grid, rate: float, mode: str):
  """Which patches structured patch dropout keeps first: order [B, N] in [0, 2) (lower is
  kept first; drop_patches breaks ties at random), from each token's (row, col) [B, N] of
  its example's grid patch_grid [B, 2] (CLIPA's structured masks):
    grid   0 on a lattice (a row + col + o) mod s = 0, s = round(1 / (1 - rate)),
           a = round(sqrt(s)), o drawn per example (rate 0.5: a checkerboard), 1 elsewhere
    block  the distance max(|row - cy| / gh, |col - cx| / gw) to a centre drawn per
           example: one contiguous block is kept."""
  b = rows.shape[0]
  if mode == "grid":
    s = max(1, int(round(1.0 / (1.0 - rate))))
    a = max(1, int(round(math.sqrt(s))))
    o = jax.random.randint(rng, (b, 1), 0, s)
    return ((a * rows + cols + o) % s != 0).astype(jnp.float32)
  if mode == "block":
    size = jnp.maximum(patch_grid, 1).astype(jnp.float32)
    centre = jax.random.uniform(rng, (b, 2)) * size
    dy = jnp.abs(rows + 0.5 - centre[:, :1]) / size[:, :1]
    dx = jnp.abs(cols + 0.5 - centre[:, 1:]) / size[:, 1:]
    return jnp.minimum(jnp.maximum(dy, dx), 1.0)
  raise ValueError(f"unknown patch_dropout_mode {mode!r}; use one of {', '.join(DROPOUT_MODES)}")


def _pair(p: Union[int, Sequence[int]]) -> Tuple[int, int]:
  return (int(p), int(p)) if isinstance(p, (int, np.integer)) else tuple(int(v) for v in p)


def patchify_image(x, patch: Union[int, Sequence[int]]):
  """[B, H, W, C] -> [B, (H/ph)(W/pw), ph*pw*C]; patch is p (square) or (ph, pw)."""
  ph, pw = _pair(patch)
  _check_divisible("image", x.shape[1:3], (ph, pw))
  return einops.rearrange(x, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=ph, p2=pw)


def patchify_video(x, tubelet: Sequence[int]):
  """[B, T, H, W, C] -> [B, (T/t)(H/p)(W/p), t*p*p*C]."""
  t, p1, p2 = tubelet
  _check_divisible("video", x.shape[1:4], tubelet)
  return einops.rearrange(x, "b (n t) (h p1) (w p2) c -> b (n h w) (t p1 p2 c)",
                          t=t, p1=p1, p2=p2)


def patchify_spectrogram(x, patch: Sequence[int]):
  """[B, T, F] -> [B, (T/pt)(F/pf), pt*pf]."""
  pt, pf = patch
  _check_divisible("audio", x.shape[1:3], patch)
  return einops.rearrange(x, "b (t pt) (f pf) -> b (t f) (pt pf)", pt=pt, pf=pf)


def _check_divisible(name, shape, patch):
  if any(s % p for s, p in zip(shape, patch)):
    raise ValueError(f"{name} input of shape {tuple(shape)} is not divisible by the patch size "
                     f"{tuple(patch)}; resize the input or change the patch size")


# ----------------------------------------------------------------------------- positions

def sincos_1d(n: int, d: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed sin-cos positions [n, d] (d even)."""
  pos = np.arange(n, dtype=np.float64)[:, None]
  omega = 1.0 / temperature ** (np.arange(d // 2, dtype=np.float64) / (d // 2))
  ang = pos * omega[None]
  return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).astype(np.float32)


def sincos_nd(grid: Sequence[int], d: int) -> np.ndarray:
  """Fixed sin-cos positions for a grid (2D: [h*w, d]; 3D: [t*h*w, d]); d split over axes."""
  k = len(grid)
  per = (d // (2 * k)) * 2
  parts = []
  coords = np.meshgrid(*[np.arange(g) for g in grid], indexing="ij")
  for c in coords:
    parts.append(sincos_1d(int(np.max(c)) + 1, per)[c.reshape(-1)])
  out = np.concatenate(parts, axis=1)
  if out.shape[1] < d:  # pad leftover channels with zeros
    out = np.pad(out, ((0, 0), (0, d - out.shape[1])))
  return out.astype(np.float32)


def _interpolate(table, grid: Sequence[int]):
  """Resize a learned position table [*old_grid, D] to [*grid, D] (linear), then flatten."""
  if tuple(table.shape[:-1]) != tuple(grid):
    table = jax.image.resize(table, tuple(grid) + table.shape[-1:], method="linear")
  return table.reshape(-1, table.shape[-1])


def input_keys(modality: str) -> Tuple[str, ...]:
  """The batch keys one modality's embedder reads: its input, `<m>_valid` [B] and (native
  aspect) `<m>_patch_grid` [B, 2]."""
  return (modality, f"{modality}_valid", f"{modality}_patch_grid")


def grid_coordinates(patch_grid, n: int):
  """patch_grid [B, 2] int (gh, gw), n -> (rows, cols [B, n] int32, valid [B, n] bool): token k
  of an example is patch (k // gw, k % gw) of its grid; k >= gh gw is padding."""
  k = jnp.arange(n, dtype=jnp.int32)[None]
  gh = patch_grid[:, :1].astype(jnp.int32)
  gw = jnp.maximum(patch_grid[:, 1:], 1).astype(jnp.int32)
  return k // gw, k % gw, k < gh * gw


def resize_weights(index, size, n_in: int):
  """The weights [B, n, n_in] of jax.image.resize 'linear' (antialiased: a triangle kernel
  widened by n_in / size when shrinking) from n_in to `size` [B, 1] samples, at output
  index [B, n]: output i reads input j with weight max(0, 1 - |j - c_i| / s), c_i = (i + 0.5)
  n_in / size - 0.5, s = max(n_in / size, 1), normalized over j."""
  size = jnp.maximum(size, 1).astype(jnp.float32)
  inv = n_in / size                                     # [B, 1]
  centre = (index.astype(jnp.float32) + 0.5) * inv - 0.5  # [B, n]
  j = jnp.arange(n_in, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(j - centre[..., None]) / jnp.maximum(inv, 1.0)[..., None])
  return w / jnp.maximum(w.sum(-1, keepdims=True), 1e-12)


class _Embedder(nn.Module):
  """Shared pieces: positions, type embedding, [CLS], masks."""
  width: int
  pos: str = "learned"  # learned | sincos
  add_cls: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  dropout: float = 0.0  # on the finished tokens, training only (layers.dropout)
  type_embedding: bool = True
  cls_position: bool = False
  pre_norm: bool = False
  patch_bias: bool = True
  mim_token: bool = True
  norm_eps: float = 1e-6  # of the pre_norm LayerNorm

  def num_tokens(self, shape: Sequence[int]) -> int:
    """Tokens it produces for one example of input shape `shape` (no batch axis), by
    arithmetic: its own tokens, + 1 with add_cls. No module is built."""
    return self._own_tokens(tuple(int(s) for s in shape)) + int(self.add_cls)

  def _own_tokens(self, shape) -> int:
    return shape[0]  # one token per element (text ids, regions, feature vectors)

  def _param(self, name, shape, axes, init=nn.initializers.normal(0.02)):
    return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

  def _positions(self, ref_grid, grid):
    if self.pos == "sincos":
      return jnp.asarray(sincos_nd(grid, self.width) if len(grid) > 1
                         else sincos_1d(grid[0], self.width))
    if self.pos != "learned":
      raise ValueError(f"unknown position embedding {self.pos!r}; use 'learned' or 'sincos'")
    axes = (None,) * len(ref_grid) + ("embed",)
    table = self._param("pos_embedding", tuple(ref_grid) + (self.width,), axes)
    return _interpolate(table, grid)

  def _finish(self, tokens, mask, ref_grid, grid, valid, patch_dropout: float = 0.0,
              coords=None):
    """tokens [B, N, D] (+ positions unless ref_grid is None, patch dropout, + type, then
    [CLS]). coords (rows, cols [B, N], grid [B, 2]): where each patch is, for structured
    patch dropout."""
    if ref_grid is not None:
      tokens = tokens + self._positions(ref_grid, grid).astype(tokens.dtype)[None]
    if patch_dropout > 0 and self.has_rng("dropout"):
      order = None
      mode = getattr(self, "patch_dropout_mode", "random")
      if mode != "random":
        order = structured_order(self.make_rng("dropout"), *coords, patch_dropout, mode)
      tokens, mask = drop_patches(self.make_rng("dropout"), tokens, mask, patch_dropout, order)
    if self.add_cls:
      cls = self._param("cls", (self.width,), ("embed",)).astype(tokens.dtype)
      if self.cls_position:
        cls = cls + self._param("cls_pos", (self.width,), ("embed",)).astype(tokens.dtype)
      cls = jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width))
      tokens = jnp.concatenate([cls, tokens], axis=1)
      mask = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
    if self.type_embedding:  # [CLS] included: the joint stream knows whose [CLS] it is
      tokens = tokens + self._param("type_embedding", (self.width,), ("embed",)).astype(
          tokens.dtype)
    if self.pre_norm:
      tokens = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="pre_norm")(tokens)
    if valid is not None:
      mask = mask & valid[:, None]
    tokens = layers.dropout(self, self.dropout, tokens.astype(self.dtype))
    tokens = nn.with_logical_constraint(tokens, ("batch", "length", "embed"))
    return tokens, mask

  def _project(self, x, name="proj", use_bias=True):
    return nn.Dense(
        self.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name, use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 (None, "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x)

  def _mim(self, tokens, mim_mask):
    """Masked modelling: the tokens where mim_mask is True become a learned [MASK]."""
    if not self.mim_token:
      if mim_mask is not None:
        raise ValueError(f"{self.name} was built with mim_token=False; it cannot take a MIM "
                         "mask (set loss_weights.mim=0 or the modality's mim_token=True)")
      return tokens
    mask_tok = self._param("mask_token", (self.width,), ("embed",)).astype(tokens.dtype)
    if mim_mask is None:
      return tokens
    return jnp.where(mim_mask[..., None], mask_tok, tokens)


class TextEmbedder(_Embedder):
  """Word/subword ids [B, L] -> tokens [B, L, D] and the mask of the tokens the model sees:

    key_mask='pad'  ids != pad_id (BERT-style padding)
    key_mask='eos'  every position up to and including the first eos_id (CLIP: the pad id is
                    a real token or the end token itself; pooling 'last' then picks the end)
    key_mask='none' every position (SigLIP attends over its padding)

  Learned table (logical axes vocab x embed) + 1D positions (the first L of max_len; longer
  text interpolates the table) + type. The text tokenizer already puts [CLS] first, so add_cls defaults to False.
  """
  # The ids default to the bytes tokenizer's; configure.text_ids fills them (and vocab_size,
  # key_mask, eos_id where needed) from data.tokenizer, so they are never assumed.
  vocab_size: int = 261
  max_len: int = 64
  pad_id: int = 0
  mask_id: int = 3                                # [MASK], for masked language modelling
  special_ids: Tuple[int, ...] = (0, 1, 2, 3)     # never masked nor drawn as replacements
  add_cls: bool = False
  key_mask: str = "pad"    # pad | eos | none
  eos_id: int = -1         # the end-of-text id, for key_mask='eos'

  def token_mask(self, ids):
    """[B, L] bool: which ids are tokens the model attends to (see key_mask)."""
    if self.key_mask == "pad":
      return ids != self.pad_id
    if self.key_mask == "eos":
      if self.eos_id < 0:
        raise ValueError("text key_mask='eos' needs the modality's eos_id; set it")
      is_eos = (ids == self.eos_id).astype(jnp.int32)
      return (jnp.cumsum(is_eos, axis=1) - is_eos) == 0
    if self.key_mask == "none":
      return jnp.ones(ids.shape, bool)
    raise ValueError(f"unknown text key_mask {self.key_mask!r}; use 'pad', 'eos' or 'none'")

  @nn.compact
  def __call__(self, ids, *, valid=None, mim_mask=None, positions=None):
    """positions [B, L] int (packed text, mmjax.packing; decoding one token at a time): token
    j gets position positions[b, j] of the same table the unpacked text uses."""
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"text input must be int ids [batch, length], got {ids.dtype}{ids.shape}")
    table = self._param("token_embedding", (self.vocab_size, self.width), ("vocab", "embed"))
    tokens = jnp.take(table, ids, axis=0).astype(self.dtype)
    n = ids.shape[1]
    if positions is not None:
      if self.add_cls:
        raise ValueError("packed text and captioning need the text modality's add_cls=False "
                         "(its [CLS] comes "
                         "from the tokenizer, one per example)")
      if self.pos == "learned" and n <= self.max_len:  # positions < max_len: the whole table
        pos = self._param("pos_embedding", (self.max_len, self.width), (None, "embed"))
      else:
        pos = self._positions((self.max_len,), (n,))
      tokens = tokens + jnp.take(pos, positions, axis=0).astype(tokens.dtype)
      return self._finish(tokens, self.token_mask(ids), None, None, valid)
    if self.pos == "learned" and n <= self.max_len:  # shorter text: the first n positions
      pos = self._param("pos_embedding", (self.max_len, self.width), (None, "embed"))
      tokens = tokens + pos[:n].astype(tokens.dtype)[None]
      return self._finish(tokens, self.token_mask(ids), None, None, valid)
    return self._finish(tokens, self.token_mask(ids), (self.max_len,), (n,), valid)


class _PatchEmbedder(_Embedder):
  """An embedder of patches (image, video, audio): patch dropout applies to it."""
  patch_dropout: float = 0.0  # see the module docstring

  def _dropped(self, mim_mask) -> float:
    """The patch dropout rate of this call: none where a MIM mask needs every position."""
    return self.patch_dropout if mim_mask is None else 0.0


class ImagePatchEmbedder(_PatchEmbedder):
  """RGB [B, H, W, C] -> fixed-size patches -> linear projection (= conv with stride = patch)
  + 2D positions (learned at `grid`, interpolated to the input's grid) + type (+ [CLS])."""
  patch: int = 16
  grid: Sequence[int] = (14, 14)
  patch_dropout_mode: str = "random"  # random | grid | block (structured_order)

  def _own_tokens(self, shape) -> int:  # (H, W, C)
    if len(shape) != 3:
      raise ValueError(f"image input_shape must be (height, width, channels), got {shape}; "
                       "set model.modalities.<name>.input_shape")
    _check_divisible("image", shape[:2], (self.patch, self.patch))
    return (shape[0] // self.patch) * (shape[1] // self.patch)

  @nn.compact
  def __call__(self, x, *, valid=None, mim_mask=None, patch_grid=None):
    """x [B, H, W, C]; or, native aspect (data.max_patches), x [B, N, p*p*C] patch rows with
    patch_grid [B, 2] = (gh, gw): token k is patch (k // gw, k % gw), tokens k >= gh gw are
    padding (masked), and each example's positions are the learned table resized to its own
    grid (`resize_weights`, what jax.image.resize gives a square grid) or sin-cos at its own
    (row, col)."""
    if patch_grid is not None:
      return self._native(x, patch_grid, valid, mim_mask)
    if x.ndim != 4:
      raise ValueError(f"image input must be [batch, height, width, channels], got {x.shape}")
    tokens = self._mim(self._project(patchify_image(x, self.patch).astype(self.dtype),
                                     use_bias=self.patch_bias), mim_mask)
    grid = (x.shape[1] // self.patch, x.shape[2] // self.patch)
    mask = jnp.ones(tokens.shape[:2], bool)
    k = jnp.broadcast_to(jnp.arange(grid[0] * grid[1], dtype=jnp.int32), mask.shape)
    coords = (k // grid[1], k % grid[1], jnp.broadcast_to(jnp.asarray(grid), (len(x), 2)))
    return self._finish(tokens, mask, self.grid, grid, valid, self._dropped(mim_mask), coords)

  def _native(self, x, patch_grid, valid, mim_mask):
    if x.ndim != 3 or x.shape[-1] % (self.patch * self.patch):
      raise ValueError(f"native-aspect image input must be patch rows [batch, patches, "
                       f"{self.patch}*{self.patch}*channels], got {x.shape}; set "
                       f"data.patch_size={self.patch} (the image modality's patch)")
    tokens = self._mim(self._project(x.astype(self.dtype), use_bias=self.patch_bias), mim_mask)
    rows, cols, mask = grid_coordinates(patch_grid, x.shape[1])
    pos = self._native_positions(rows, cols, patch_grid)
    return self._finish(tokens + pos.astype(tokens.dtype), mask, None, None, valid,
                        self._dropped(mim_mask), (rows, cols, patch_grid))

  def _native_positions(self, rows, cols, patch_grid):
    """[B, N, D]: each token's position at its (row, col) of its example's grid."""
    n = rows.shape[1]
    if self.pos == "sincos":  # sincos_nd's two axes, read at the token's own coordinates
      per = (self.width // 4) * 2
      table = jnp.asarray(sincos_1d(n, per))
      out = jnp.concatenate([table[rows], table[cols]], axis=-1)
      return jnp.pad(out, ((0, 0), (0, 0), (0, self.width - out.shape[-1])))
    if self.pos != "learned":
      raise ValueError(f"unknown position embedding {self.pos!r}; use 'learned' or 'sincos'")
    gh0, gw0 = self.grid
    table = self._param("pos_embedding", (gh0, gw0, self.width), (None, None, "embed"))
    wy = resize_weights(rows, patch_grid[:, :1], gh0)   # [B, N, gh0]
    wx = resize_weights(cols, patch_grid[:, 1:], gw0)   # [B, N, gw0]
    w = (wy[..., :, None] * wx[..., None, :]).reshape(rows.shape + (gh0 * gw0,))
    return w.astype(table.dtype) @ table.reshape(gh0 * gw0, self.width)


class VideoTubeletEmbedder(_PatchEmbedder):
  """Video [B, T, H, W, C] -> t x p x p tubelets -> linear projection + space-time positions
  (learned 3D at `grid`, interpolated to a new clip length/resolution) + type (+ [CLS])."""
  tubelet: Sequence[int] = (2, 16, 16)
  grid: Sequence[int] = (4, 14, 14)

  def _own_tokens(self, shape) -> int:  # (T, H, W, C)
    if len(shape) != 4:
      raise ValueError(f"video input_shape must be (time, height, width, channels), got "
                       f"{shape}; set model.modalities.<name>.input_shape")
    _check_divisible("video", shape[:3], self.tubelet)
    return math.prod(s // t for s, t in zip(shape[:3], self.tubelet))

  @nn.compact
  def __call__(self, x, *, valid=None, mim_mask=None):
    if x.ndim != 5:
      raise ValueError(f"video input must be [batch, time, height, width, channels], "
                       f"got {x.shape}")
    tokens = self._mim(self._project(patchify_video(x, self.tubelet).astype(self.dtype),
                                     use_bias=self.patch_bias), mim_mask)
    grid = tuple(s // t for s, t in zip(x.shape[1:4], self.tubelet))
    return self._finish(tokens, jnp.ones(tokens.shape[:2], bool), self.grid, grid, valid,
                        self._dropped(mim_mask))


class AudioSpectrogramEmbedder(_PatchEmbedder):
  """Log-mel spectrogram [B, T, F] -> (time x mel) patches -> linear projection + 2D positions
  (interpolated along time for longer clips) + type (+ [CLS]) (AST, MBT)."""
  patch: Sequence[int] = (16, 16)
  grid: Sequence[int] = (8, 8)

  def _own_tokens(self, shape) -> int:  # (T, F)
    if len(shape) != 2:
      raise ValueError(f"audio input_shape must be (time, mel), got {shape}; set "
                       "model.modalities.<name>.input_shape")
    _check_divisible("audio", shape[:2], self.patch)
    return (shape[0] // self.patch[0]) * (shape[1] // self.patch[1])

  @nn.compact
  def __call__(self, x, *, valid=None, mim_mask=None):
    if x.ndim != 3:
      raise ValueError(f"audio input must be a spectrogram [batch, time, mel], got {x.shape}")
    tokens = self._mim(self._project(patchify_spectrogram(x, self.patch).astype(self.dtype),
                                     use_bias=self.patch_bias), mim_mask)
    grid = (x.shape[1] // self.patch[0], x.shape[2] // self.patch[1])
    return self._finish(tokens, jnp.ones(tokens.shape[:2], bool), self.grid, grid, valid,
                        self._dropped(mim_mask))


class RegionEmbedder(_Embedder):
  """Detector regions: {'features' [B, N, F] (e.g. 2048-d), 'boxes' [B, N, 5]
  (x1, y1, x2, y2, area, normalized), optional 'mask' [B, N]} -> LN(W_f f) + LN(W_b box),
  combined by sum or mean (ViLBERT, LXMERT, UNITER), + type (+ [CLS]). The box is the position."""
  combine: str = "sum"  # sum | mean

  @nn.compact
  def __call__(self, x, *, valid=None, mim_mask=None):
    feats, boxes = x["features"], x["boxes"]
    mask = x.get("mask", jnp.ones(feats.shape[:2], bool))
    ln = lambda name: nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    f = ln("ln_feature")(self._project(feats.astype(self.dtype), "feature_proj"))
    b = ln("ln_box")(self._project(boxes.astype(self.dtype), "box_proj"))
    if self.combine not in ("sum", "mean"):
      raise ValueError(f"unknown region combine {self.combine!r}; use 'sum' or 'mean'")
    tokens = self._mim(f + b if self.combine == "sum" else 0.5 * (f + b), mim_mask)
    return self._finish(tokens, mask, None, None, valid)


class FeatureEmbedder(_Embedder):
  """Generic per-element vectors (music frames, point clouds, tabular cells, pose):
  [B, N, F] (or {'features', 'mask'}) -> linear or MLP projection + 1D positions + type."""
  hidden: int = 0  # 0: linear; > 0: MLP with this hidden width
  max_len: int = 64
  use_positions: bool = True  # False for sets (point clouds)

  @nn.compact
  def __call__(self, x, *, valid=None, mim_mask=None):
    feats = x["features"] if isinstance(x, dict) else x
    mask = x.get("mask") if isinstance(x, dict) else None
    mask = jnp.ones(feats.shape[:2], bool) if mask is None else mask
    h = feats.astype(self.dtype)
    if self.hidden:
      h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="hidden")(h))
    tokens = self._mim(self._project(h), mim_mask)
    ref = (self.max_len,) if self.use_positions else None
    return self._finish(tokens, mask, ref, (feats.shape[1],), valid)


EMBEDDERS = {
    "text": TextEmbedder,
    "image": ImagePatchEmbedder,
    "video": VideoTubeletEmbedder,
    "audio": AudioSpectrogramEmbedder,
    "regions": RegionEmbedder,
    "features": FeatureEmbedder,
}


def build_embedder(kind: str, name: str, width: int, dtype, param_dtype, **kwargs) -> nn.Module:
  """Embedder for a modality config {'kind': ..., **kwargs}."""
  if kind not in EMBEDDERS:
    raise ValueError(f"modality {name!r} has unknown kind {kind!r}; choose one of "
                     f"{', '.join(EMBEDDERS)}")
  cls = EMBEDDERS[kind]
  fields = set(cls.__dataclass_fields__)
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"modality {name!r} ({kind}) has unknown option(s) {sorted(unknown)}; "
                     f"valid: {sorted(fields - {'parent', 'name', 'width', 'dtype', 'param_dtype'})}")
  for k in ("grid", "tubelet", "patch"):
    if k in kwargs and isinstance(kwargs[k], (list, tuple)):
      kwargs[k] = tuple(kwargs[k])
  return cls(width=width, dtype=dtype, param_dtype=param_dtype, name=f"embed_{name}", **kwargs)


def dropped_patches(model) -> dict:
  """{modality name: its patch dropout rate} of a ModelConfig, for the modalities that drop."""
  rates = {m.name: patch_dropout_of(m, model.block) for m in model.modalities}
  return {name: rate for name, rate in rates.items() if rate}


def patch_dropout_of(mod, block) -> float:
  """The patch dropout rate of one modality config: its own option, else the model's (0 for
  kinds that are not cut into patches)."""
  if mod.kind not in PATCH_KINDS:
    return 0.0
  return float(dict(mod.options).get("patch_dropout", block.patch_dropout))


def modality_embedder(mod, block) -> nn.Module:
  """The embedder of one modality config (config_lib.ModalityConfig) at its tower's width, with
  the model's dropout (and patch dropout) and the tower's norm epsilon unless the modality sets
  its own."""
  opts = dict(mod.options)
  opts.setdefault("dropout", block.dropout)
  if mod.kind in PATCH_KINDS:
    opts["patch_dropout"] = patch_dropout_of(mod, block)
  opts.setdefault("norm_eps", (mod.tower or block).norm_eps)
  return build_embedder(mod.kind, mod.name, (mod.tower or block).width, block.dtype,
                        block.param_dtype, **opts)


def dummy_input(mod, batch_size: int):
  """A zero input of one modality config with the shape its embedder expects (numpy)."""
  kind, shape = mod.kind, mod.input_shape
  if kind == "text":
    ids = np.zeros((batch_size, mod.option("max_len")), np.int32)
    ids[:, 0] = 1
    return ids
  if kind in PATCH_KINDS:
    return np.zeros((batch_size,) + shape, np.float32)
  if kind == "regions":
    n = shape[0] if shape else 36
    return {"features": np.zeros((batch_size, n, mod.feature_dim), np.float32),
            "boxes": np.zeros((batch_size, n, 5), np.float32),
            "mask": np.ones((batch_size, n), bool)}
  n = shape[0] if shape else mod.option("max_len")
  return np.zeros((batch_size, n, mod.in_dim), np.float32)


def input_shape(mod) -> Tuple[int, ...]:
  """The shape of one example of a modality config's input, without the batch axis (the
  array of dummy_input; regions and feature vectors: their element count)."""
  x = dummy_input(mod, 1)
  return tuple((x["features"] if isinstance(x, dict) else x).shape[1:])


def token_count(mod, block) -> int:
  """Tokens the modality's embedder produces for its configured input shape, stated by the
  embedder (`num_tokens`, arithmetic: no model built, nothing traced)."""
  return modality_embedder(mod, block).num_tokens(input_shape(mod))


def traced_token_count(mod, block) -> int:
  """token_count the long way: the embedder's output shape under jax.eval_shape (what the
  arithmetic is tested against)."""
  emb = modality_embedder(mod, block)
  x = dummy_input(mod, 1)
  shape = jax.eval_shape(lambda b: emb.init_with_output(jax.random.key(0), b)[0], x)
  return int(shape[0].shape[1])
