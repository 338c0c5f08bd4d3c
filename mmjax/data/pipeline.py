"""The grain input pipeline: source -> preprocess -> shuffle -> repeat -> process shard -> batch.

Sharding: the shuffled (and repeated) example stream is cut into global batches of
`global_batch_size` G; process p of P takes the contiguous block of stream positions
b*G + p*L + k (k < L = G/P) for batch b. Processes get disjoint examples whose concatenation in
process order is exactly the global batch, rows in stream order: the global array (and so every
per-row random draw of the objectives: masks, ITM negatives) does not depend on the process
count. The exception is sharded archives with data.shard_assign='shards' (training split):
there each process reads only its own shards (mmjax.data.shards.assign), shuffles and batches
its own stream, and the global batch is the concatenation of the local ones.

    ds = make_dataset(config.data, "train", global_batch_size=64, seed=0)
    it = iter(ds)                      # grain DatasetIterator
    batch = next(it)                   # dict of numpy arrays, leading dim 64 / process_count
    state = it.get_state()             # JSON-serializable; it.set_state(state) resumes exactly
    arrays = to_global_arrays(batch, NamedSharding(mesh, P(("data", "fsdp"))))

data.on_error='skip' (external sources): bad examples are dropped after decoding and the next
ones fill the batch, so each process filters its own stream (the global batch then depends on
the process count, and with workers each worker filters its slice of examples). Every row of a
batch carries '_skipped', the count dropped so far by the worker that built it, and
'_skip_worker'; SkipCounter sums them. More than data.max_skip_fraction of the examples read
(per worker, after 100) stops the run.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

import grain
import jax
import numpy as np

from mmjax.data import builtin, decode, shards, sources
from mmjax.data import config as config_lib

SPLIT_ALIASES = {"train": "train", "test": "test", "eval": "test", "validation": "test"}


def per_process_shards(cfg, split: str, process_count: int) -> bool:
  """True when each process reads its own shards (data.shard_assign='shards', training)."""
  return (cfg.source in ("wds", "array_record") and cfg.shard_assign == "shards"
          and SPLIT_ALIASES.get(split) == "train" and process_count > 1)


def make_source(cfg, split: str, process_index: int = 0,
                process_count: int = 1) -> grain.MapDataset:
  """MapDataset of preprocessed examples (not shuffled, not batched), each with 'index'.
  Under `per_process_shards` only this process's shards (p, p + P, ...), else all examples."""
  if split not in SPLIT_ALIASES:
    raise ValueError(f"unknown split {split!r}; use 'train' or 'test' (alias 'eval')")
  split = SPLIT_ALIASES[split]
  if cfg.source == "builtin":
    ds = grain.MapDataset.source(builtin.source_from_config(cfg, split))
    return ds.map(decode.CutPatches(cfg.patch_size, cfg.max_patches)) if cfg.max_patches else ds
  if cfg.source == "tfds":
    src = sources.TfdsSource(cfg, split)
  elif cfg.source == "folder":
    src = sources.FolderSource(sources.folder_path(cfg, split))
  elif cfg.source in ("wds", "array_record"):
    key = sources.shard_key(cfg, split)
    paths = shards.shard_paths(sources.shard_spec(cfg, split), key)
    if per_process_shards(cfg, split, process_count):
      paths = shards.assign(paths, process_index, process_count, key)
    src = (shards.WdsSource(paths, cfg.member_exts, cfg.on_error, name=key)
           if cfg.source == "wds" else shards.ArrayRecordSource(paths, cfg.member_exts, key))
    for err in getattr(src, "errors", ()):
      logging.warning("data: %s; read the examples before the damage", err)
  else:
    path = cfg.jsonl_eval_path if split == "test" and cfg.jsonl_eval_path else cfg.jsonl_path
    src = sources.JsonlSource(path, cfg.on_error)
  if cfg.source != "jsonl" and cfg.on_error == "skip":
    src = _SafeSource(src)
  return grain.MapDataset.source(src).map_with_index(decode.Preprocessor(cfg, split))


def make_dataset(data_cfg, split: str, *, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                 repeat: bool = True, num_workers: int | None = None,
                 sample_captions: bool | None = None) -> grain.IterDataset:
  """grain IterDataset of this process's batches: dicts of numpy arrays [G/P, ...].

  data_cfg: ConfigDict/dict overriding mmjax.data.config.get_config() (validated).
  repeat=False: one pass; the tail that does not fill a global batch is dropped.
  num_workers: grain multiprocess prefetch workers (None: data_cfg.num_workers; 0: in-process).
  `iter(ds)` gives a checkpointable iterator (get_state / set_state).
  sample_captions (None: = shuffle), with data.max_captions > 1: each example's 'texts' /
  'num_captions' become one 'text', caption j = PickCaption(seed)(stream position) (so every
  epoch draws anew, a resumed run and every process draw the same); False keeps 'texts'.
  """
  cfg = config_lib.resolve(data_cfg)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}; change batch_size")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count})")
  local = global_batch_size // process_count
  own = per_process_shards(cfg, split, process_count)  # this process's shards only
  ds = make_source(cfg, split, process_index, process_count)
  n, need = len(ds), (local if own else global_batch_size)
  if n < need:
    raise ValueError(f"{split} split has {n} examples{' in this process' if own else ''}, "
                     f"fewer than one {'local' if own else 'global'} batch ({need}); lower "
                     "batch_size or add data")
  if shuffle:
    ds = ds.shuffle(seed=int(seed) % 2**32)
  ds = ds.repeat() if repeat else ds[: n - n % need]
  if int(cfg.max_captions) > 1 and (shuffle if sample_captions is None else sample_captions):
    ds = ds.map_with_index(PickCaption(seed))
  if not own:  # the shared stream: this process's block of each global batch
    ds = grain.MapDataset.range(len(ds) // process_count).map(
        _ProcessBlock(ds, process_index, local, global_batch_size))
  threads, buf = int(cfg.read_threads), max(int(cfg.prefetch_batches), 1)
  if cfg.source != "builtin" and cfg.on_error == "skip":
    out = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                               prefetch_buffer_size=buf * local))
    out = _SkipBad(out, float(cfg.max_skip_fraction)).batch(local, drop_remainder=True)
  else:
    ds = ds.batch(local, drop_remainder=True)
    out = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buf))
  workers = cfg.num_workers if num_workers is None else num_workers
  if workers and workers > 0:
    _grain_flags_readable()  # grain's mp_prefetch reads an absl flag of its own
    out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(workers),
                                                       per_worker_buffer_size=buf))
  return out


class _ProcessBlock:
  """Local position i -> the stream's element (i // L) * G + p * L + i % L (picklable)."""

  def __init__(self, ds, process_index: int, local: int, global_batch_size: int):
    self.ds, self.offset, self.local, self.glob = ds, process_index * local, local, global_batch_size

  def __call__(self, i):
    i = int(i)
    return self.ds[(i // self.local) * self.glob + self.offset + i % self.local]


class PickCaption:
  """(stream position i, example) -> the example with text = texts[j], 'texts' and
  'num_captions' dropped; j ~ uniform{0..num_captions-1} from Philox keyed by (seed, i).
  Picklable; a SKIP sentinel passes through."""

  def __init__(self, seed: int):
    self.seed = int(seed) % 2**64

  def __call__(self, i: int, ex: Dict[str, Any]) -> Dict[str, Any]:
    if decode.SKIP in ex or "texts" not in ex:
      return ex
    n = int(ex["num_captions"])
    rng = np.random.Generator(np.random.Philox(key=[self.seed, int(i)]))
    j = int(rng.integers(n)) if n > 1 else 0
    out = {k: v for k, v in ex.items() if k not in ("texts", "num_captions")}
    out["text"] = np.asarray(ex["texts"][j])
    return out


SKIPPED, SKIP_WORKER = "_skipped", "_skip_worker"
MIN_READ = 100  # examples read before data.max_skip_fraction is enforced


class _SafeSource:
  """A source whose unreadable records become {'_where', '_error'} rows (picklable)."""

  def __init__(self, src):
    self.src = src

  def __len__(self) -> int:
    return len(self.src)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    try:
      return self.src[index]
    except Exception as e:  # pylint: disable=broad-except
      name = getattr(self.src, "name", type(self.src).__name__)
      if hasattr(self.src, "where"):  # shards: the key and shard; the error names them
        return {"_where": self.src.where(index), "_error": str(e)}
      return {"_where": f"({name} #{index})",
              "_error": f"cannot read record {index} of {name} ({type(e).__name__}: {e})"}


class _SkipBad(grain.IterDataset):
  """Drops the SKIP sentinels of decode.Preprocessor, counting them (checkpointed)."""

  def __init__(self, parent, max_fraction: float):
    super().__init__(parent)
    self.max_fraction, self.worker = max_fraction, 0

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """grain's worker slicing: remember the worker, slice the parent."""
    self.worker = int(sl.start or 0)
    self._parent.set_slice(sl, sequential_slice)

  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__(), self.max_fraction, self.worker)


class _SkipBadIterator(grain.DatasetIterator):
  """Good examples, each with the worker's skipped count so far; state: parent + counts."""

  def __init__(self, parent, max_fraction: float, worker: int):
    super().__init__(parent)
    self.max_fraction, self.worker = max_fraction, worker
    self.read = self.skipped = 0
    self._named = set()

  def __next__(self):
    while True:
      ex = next(self._parent)
      self.read += 1
      if decode.SKIP not in ex:
        ex[SKIPPED], ex[SKIP_WORKER] = np.int64(self.skipped), np.int32(self.worker)
        return ex
      self.skipped += 1
      msg = ex[decode.SKIP]
      if msg not in self._named:
        self._named.add(msg)
        logging.warning("data: skipped a bad example (%d so far): %s", self.skipped, msg)
      if self.read >= MIN_READ and self.skipped > self.max_fraction * self.read:
        raise ValueError(
            f"{self.skipped} of {self.read} examples read were bad "
            f"({self.skipped / self.read:.1%} > data.max_skip_fraction={self.max_fraction}); "
            f"last: {msg}; fix the data or raise data.max_skip_fraction")

  def get_state(self) -> Dict[str, Any]:
    return {"parent": self._parent.get_state(), "read": self.read, "skipped": self.skipped}

  def set_state(self, state) -> None:
    self._parent.set_state(state["parent"])
    self.read, self.skipped = int(state["read"]), int(state["skipped"])


class SkipCounter:
  """Examples skipped so far under data.on_error='skip', from the counts batches carry."""

  def __init__(self):
    self.by_worker: Dict[int, int] = {}

  @property
  def active(self) -> bool:
    return bool(self.by_worker)

  def update(self, batch):
    """Reads a local batch's counts; returns the batch unchanged."""
    if SKIPPED in batch:
      w = int(np.asarray(batch[SKIP_WORKER]).reshape(-1)[0])
      n = int(np.max(batch[SKIPPED]))
      self.by_worker[w] = max(self.by_worker.get(w, 0), n)
    return batch

  def total(self) -> int:
    """This process's workers summed, then summed over processes (a collective when P > 1)."""
    n = sum(self.by_worker.values())
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      n = int(np.sum(multihost_utils.process_allgather(np.int64(n))))
    return n


# grain's flags that its multiprocess prefetch reads as `FLAG.value` (grain 0.2: the worker
# profiling switch), which absl refuses before the command line is parsed; grain reads its other
# flags with get_or_default.
_GRAIN_READ_FLAGS = ("grain_enable_multiprocess_worker_profiling",)


def _grain_flags_readable():
  """Lets grain read _GRAIN_READ_FLAGS outside absl.app (pytest, argparse scripts, a user's
  program) without marking the process's flags parsed: only while absl's flags are unparsed,
  each of those grain flags is marked present, as grain marks its debug flags in its workers,
  so reading it gives its value (the default) and nothing else changes. Parsing the command
  line later still sets them, and every other flag stays unreadable until then. Called only
  where mp_prefetch is used, never on import."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.is_parsed():
    return
  for name in _GRAIN_READ_FLAGS:
    if name in flags.FLAGS and not flags.FLAGS[name].present:
      flags.FLAGS[name].present = 1


def steps_per_epoch(data_cfg, split: str, global_batch_size: int) -> int:
  """Full global batches in one pass over the split."""
  cfg = config_lib.resolve(data_cfg)
  return len(make_source(cfg, split)) // global_batch_size


def to_global_arrays(local_batch, sharding) -> Any:
  """Process-local numpy batch -> global jax.Arrays (`jax.make_array_from_process_local_data`).

  sharding: one jax.sharding.Sharding for every leaf (e.g. NamedSharding(mesh, P('data'))), or a
  pytree of them matching the batch. String leaves (captions) are returned unchanged.
  """
  def one(x, s):
    x = np.asarray(x)
    if x.dtype.kind in "USO":
      return x
    return jax.make_array_from_process_local_data(s, x)

  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, sharding), local_batch)
  return jax.tree.map(one, local_batch, sharding)
