"""Packing: several short examples share one row of length L (masked language modelling text;
native-aspect images in their tower).

Host side (numpy, pure): `pack` places each example's span -- its first n_i positions, n_i =
the last token the model sees + 1 -- whole into rows of length L by first-fit decreasing, and
returns the packed ids, segment ids (0 = pad, 1.. = the row's k-th example), positions that
restart at 0 per segment, the flat source index of every slot and the inverse mapping (row,
segment, start of each example). `unpack` inverts it. Nothing is split across rows and no row
is longer than L.

Device side (jnp): a packed batch only carries `<text>_pack_index` [R, L] (flat index into the
[B, L] text, -1 = pad). `gather_packed` moves any per-token array [B, L, ...] into the packed
layout, and `index_segments` gives the segment ids (example + 1: equal within one example,
distinct across examples) and positions. The MLM mask is drawn on the unpacked [B, L] ids and
then gathered, so the packed loss sees exactly the same masked tokens as the unpacked one:
  sum_{r,j} w'_{rj} ce'_{rj} / sum w' = sum_{b,l} w_{bl} ce_{bl} / sum w.

Image packing (objectives.pack_images, native-aspect images): `add_image_pack_index` places
each image's [CLS] + gh gw patch tokens, a prefix of its 1 + N slots, whole into rows of
image_pack_len slots; MultimodalModel.encode runs the image tower on the gathered rows with
segment ids and scatters its output back to [B, 1 + N], so every later stage sees the padded
layout and the loss is the padded batch's. `padding_fraction` reports the slots spent on
padding, as fed and packed.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Packed:
  """A packed text batch (numpy). R rows of length L from B examples."""
  ids: np.ndarray           # [R, L] int32, pad_id where no example
  segment_ids: np.ndarray   # [R, L] int32, 0 = pad, k = the k-th example placed in the row
  positions: np.ndarray     # [R, L] int32, position within the example (0 at pads)
  index: np.ndarray         # [R, L] int32, flat source index b * L + l, -1 at pads
  example_row: np.ndarray   # [B] int32, the row of example b (-1: empty, not placed)
  example_segment: np.ndarray  # [B] int32, its segment id in that row (0 if empty)
  example_start: np.ndarray    # [B] int32, its first slot in the row
  lengths: np.ndarray          # [B] int32, n_b the span packed


def span_lengths(valid: np.ndarray) -> np.ndarray:
  """valid [B, L] bool (the tokens the model sees) -> n [B]: last valid position + 1 (0 if
  none). The span [0, n) keeps any inner invalid token, with its validity, so packing is exact
  whatever the mask layout."""
  valid = np.asarray(valid, bool)
  any_ = valid.any(axis=1)
  last = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
  return np.where(any_, last + 1, 0).astype(np.int32)


def host_token_mask(ids: np.ndarray, key_mask: str = "pad", pad_id: int = 0,
                    eos_id: int = -1) -> np.ndarray:
  """numpy twin of TextEmbedder.token_mask: ids [B, L] -> bool [B, L]."""
  ids = np.asarray(ids)
  if key_mask == "pad":
    return ids != pad_id
  if key_mask == "eos":
    is_eos = (ids == eos_id).astype(np.int32)
    return (np.cumsum(is_eos, axis=1) - is_eos) == 0
  raise ValueError(f"text packing needs key_mask 'pad' or 'eos', got {key_mask!r} (with "
                   "'none' the padding is attended to, so it cannot be dropped)")


def assign_rows(lengths: np.ndarray, row_len: int, num_rows: Optional[int] = None,
                key: str = "objectives.pack_rows"):
  """First-fit decreasing: lengths [B] (each <= row_len) -> (row [B], start [B], rows used).
  Empty examples (length 0) get row -1. With num_rows set, more rows needed is an error
  naming the setting `key`."""
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and lengths.max() > row_len:
    raise ValueError(f"an example of {lengths.max()} tokens does not fit a row of {row_len}")
  order = np.argsort(-lengths, kind="stable")
  fill = []  # tokens used per row
  row = np.full(lengths.shape, -1, np.int32)
  start = np.zeros(lengths.shape, np.int32)
  for b in order:
    n = lengths[b]
    if n == 0:
      continue
    for r, used in enumerate(fill):
      if used + n <= row_len:
        break
    else:
      r = len(fill)
      fill.append(0)
    row[b], start[b] = r, fill[r]
    fill[r] += n
  if num_rows is not None and len(fill) > num_rows:
    raise ValueError(f"this batch needs {len(fill)} packed rows > {key}={num_rows}; raise "
                     f"{key} (0 = batch size: always fits)")
  return row, start, len(fill)


def pack(ids: np.ndarray, valid: np.ndarray, pad_id: int = 0,
         num_rows: Optional[int] = None, key: str = "objectives.pack_rows") -> Packed:
  """ids [B, L], valid [B, L] bool -> Packed with R = num_rows (else the rows needed) rows.

  Example b's span ids[b, :n_b] goes to row example_row[b], slots start..start + n_b - 1,
  segment ids 1.. in placement order within the row, positions 0..n_b - 1."""
  ids = np.asarray(ids)
  b, length = ids.shape
  lengths = span_lengths(valid)
  row, start, used = assign_rows(lengths, length, num_rows, key)
  r_total = used if num_rows is None else num_rows
  out = np.full((r_total, length), pad_id, ids.dtype)
  seg = np.zeros((r_total, length), np.int32)
  pos = np.zeros((r_total, length), np.int32)
  index = np.full((r_total, length), -1, np.int32)
  example_segment = np.zeros((b,), np.int32)
  count = np.zeros((r_total,), np.int32)
  for e in np.argsort(start + length * (row.astype(np.int64) + 1), kind="stable"):
    n, r, s = lengths[e], row[e], start[e]
    if n == 0:
      continue
    count[r] += 1
    example_segment[e] = count[r]
    out[r, s:s + n] = ids[e, :n]
    seg[r, s:s + n] = count[r]
    pos[r, s:s + n] = np.arange(n)
    index[r, s:s + n] = e * length + np.arange(n)
  return Packed(out, seg, pos, index, row, example_segment, start, lengths)


def unpack(packed: Packed, pad_id: int = 0) -> np.ndarray:
  """The inverse: Packed -> ids [B, L], each example's span back at 0..n_b - 1, pad after."""
  b, length = packed.lengths.shape[0], packed.ids.shape[1]
  out = np.full((b, length), pad_id, packed.ids.dtype)
  for e in range(b):
    n, r, s = packed.lengths[e], packed.example_row[e], packed.example_start[e]
    if n:
      out[e, :n] = packed.ids[r, s:s + n]
  return out


def pack_index(ids: np.ndarray, valid: np.ndarray, num_rows: int, offset: int = 0,
               key: str = "objectives.pack_rows") -> np.ndarray:
  """The one array a packed batch carries: [num_rows, L] int32 flat indices (+ offset, e.g.
  this process's first example * L), -1 at pads."""
  idx = pack(ids, valid, num_rows=num_rows, key=key).index
  return np.where(idx >= 0, idx + offset, -1).astype(np.int32)


def efficiency(valid: np.ndarray, num_rows: Optional[int] = None):
  """(tokens per row unpacked, tokens per row packed, rows before, rows after) for one batch."""
  lengths = span_lengths(valid)
  _, _, used = assign_rows(lengths, np.asarray(valid).shape[1], num_rows)
  rows = used if num_rows is None else num_rows
  total = float(lengths.sum())
  return total / len(lengths), total / max(rows, 1), len(lengths), rows


# ------------------------------------------------------------------------------ device side

def gather_packed(x, index, fill=0):
  """x [B, L, ...] -> [R, L, ...]: slot (r, j) takes x.flat[index[r, j]], `fill` where -1."""
  b, length = x.shape[:2]
  flat = x.reshape((b * length,) + x.shape[2:])
  got = jnp.take(flat, jnp.maximum(index, 0), axis=0)
  keep = (index >= 0).reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.where(keep, got, jnp.asarray(fill, x.dtype))


def index_segments(index, length: int):
  """index [R, L] -> (segment_ids [R, L] = example + 1, 0 at pads; positions [R, L] =
  index mod L, the position within the example)."""
  seg = jnp.where(index >= 0, index // length + 1, 0).astype(jnp.int32)
  pos = jnp.where(index >= 0, index % length, 0).astype(jnp.int32)
  return seg, pos


def scatter_unpacked(y, index, batch: int, length: Optional[int] = None):
  """The inverse of gather_packed: y [R, L', ...] -> [B, L, ...] (L: the examples' length,
  default L'), zeros where nothing lands."""
  length = length or y.shape[1]
  flat = jnp.zeros((batch * length + 1,) + y.shape[2:], y.dtype)
  dst = jnp.where(index >= 0, index, batch * length).reshape(-1)
  flat = flat.at[dst].set(y.reshape((-1,) + y.shape[2:]))
  return flat[:-1].reshape((batch, length) + y.shape[2:])


# ------------------------------------------------------------------------------ the step

def add_pack_index(batch, model_cfg, num_rows: int, process_index: int = 0):
  """Host transform of a process-local batch for objectives.pack_text: adds
  `<m>_pack_index` [num_rows, L] for every text modality m (indices into the global [B, L]
  text: this process's rows come after process_index * B_local). The text stays unpacked
  (the clean pass of the alignment losses reads it; MLM masks are drawn on it)."""
  out = dict(batch)
  for m in model_cfg.modalities:
    if m.kind != "text" or m.name not in batch:
      continue
    ids = np.asarray(batch[m.name])
    valid = host_token_mask(ids, m.option("key_mask"), m.option("pad_id"), m.option("eos_id"))
    # <m>_valid is not applied here: an absent example's span is packed like the unpacked row
    # (its MLM weights come from the ids alone), and the model masks it as a whole.
    out[f"{m.name}_pack_index"] = pack_index(ids, valid, num_rows,
                                             offset=process_index * ids.size)
  return out


def image_pack_index(lengths: np.ndarray, slots: int, num_rows: int, row_len: int,
                     offset: int = 0) -> np.ndarray:
  """lengths [B] (each example's tokens: a prefix of its `slots` token slots) -> [num_rows,
  row_len] int32 flat indices into the [B, slots] tokens (+ offset), -1 where empty: first-fit
  decreasing (`assign_rows`), examples whole, in their slot order."""
  row, start, _ = assign_rows(lengths, row_len, num_rows, "objectives.image_pack_rows")
  index = np.full((num_rows, row_len), -1, np.int32)
  for b, n in enumerate(lengths):
    if n:
      index[row[b], start[b]:start[b] + n] = offset + b * slots + np.arange(n)
  return index


def image_tokens(batch, mod):
  """(lengths [B], slots) of a native-aspect image modality config `mod` in `batch`: each
  image's tokens ([CLS] with add_cls, then its gh gw patches) and the token slots the
  embedder gives every image (1 + N); None where the batch has no `<m>_patch_grid`."""
  grid = batch.get(f"{mod.name}_patch_grid")
  if mod.kind != "image" or grid is None:
    return None
  grid, cls = np.asarray(grid), int(bool(mod.option("add_cls")))
  return cls + grid[:, 0] * grid[:, 1], np.asarray(batch[mod.name]).shape[1] + cls


def add_image_pack_index(batch, model_cfg, num_rows: int, row_len: int = 0,
                         process_index: int = 0):
  """Host transform for objectives.pack_images: adds `<m>_pack_index` [num_rows, row_len] for
  every native-aspect image modality m (its batch has `<m>_patch_grid`). Example b's tokens
  are its [CLS] (with add_cls) and its gh gw patches, the first of the 1 + N token slots the
  embedder gives each example; row_len (0: 1 + N, one example's slots) of several such are
  filled first-fit decreasing (indices into the global [B, 1 + N] tokens, this process's
  after process_index * B_local)."""
  out = dict(batch)
  for m in model_cfg.modalities:
    tokens = image_tokens(batch, m)
    if tokens is None:
      continue
    lengths, slots = tokens
    out[f"{m.name}_pack_index"] = image_pack_index(lengths, slots, num_rows, row_len or slots,
                                                   process_index * len(lengths) * slots)
  return out


def padding_fraction(batch, model_cfg, num_rows: Optional[int] = None, row_len: int = 0
                     ) -> dict:
  """{m: fraction of the image token slots that are padding} of a native-aspect batch: as fed
  ([B, 1 + N]) and, with num_rows, packed (`<m>_packed`) into num_rows rows of row_len (0:
  1 + N) slots."""
  out = {}
  for m in model_cfg.modalities:
    tokens = image_tokens(batch, m)
    if tokens is None:
      continue
    lengths, slots = tokens
    used = float(lengths.sum())
    out[m.name] = 1.0 - used / (len(lengths) * slots)
    if num_rows:
      out[f"{m.name}_packed"] = 1.0 - used / (num_rows * (row_len or slots))
  return out

