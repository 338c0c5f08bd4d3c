"""Orbax checkpoints: async saves, keep the last K, resume, restore onto any mesh.

A checkpoint step holds three items:
  state    TrainState (params, optimizer state, step); restored into the target shardings, so
           the mesh (and process count) may differ from the one that saved it
  data     the grain iterator state, one JSON file per process (restores with the same
           process count; with another count the data order restarts from the step's epoch)
  config   the full config as JSON (eval.py rebuilds the model from it)
The randomness of step s is fold_in(key(seed), s): the seed (in the config) and the step are
the whole RNG state. Orbax writes each step into a temporary directory and renames it on
commit, so a step that was being written when the process died is never listed or restored.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
from typing import Any, Optional

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
  """A missing or unreadable checkpoint, with a one-line message naming the fix."""


class StepVanished(CheckpointError):
  """The step was deleted while it was read: the writer's keep policy removed it (a reader of
  a live run retries on the new latest step)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with mmjax's three items."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = directory
    options = ocp.CheckpointManagerOptions(  # read-only: the values orbax would force
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    self._pending: Optional[int] = None  # the step of the last save started
    self._failed = False  # a save failed and was reported: close() does not wait again
    _await_tmp_cleanup(self.manager)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, config=None, force: bool = False):
    """Start saving `step` (asynchronously unless async_save=False). A storage error of this
    save or of the one before it (no space, file too large, no permission, a read-only or
    vanished directory) is a one-line CheckpointError naming the step, path and cause."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    _quiet_failed_writes()
    with self._saving(step):
      return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  @contextlib.contextmanager
  def _saving(self, step: Optional[int]):
    """Context for a save or a wait: orbax's storage errors as a CheckpointError (once)."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      cause = storage_error(e)
      if cause is None:
        raise
      failed = self._pending if self._pending is not None else step
      self._failed = True
      raise CheckpointError(self._save_failure(failed, cause)) from None
    if step is not None:
      self._pending = step

  def _save_failure(self, step: Optional[int], cause: str) -> str:
    committed = _committed_steps(self.directory)
    kept = (f"the last committed checkpoint, step {committed[-1]}, is intact and a rerun "
            "resumes from it" if committed else "no checkpoint was committed yet")
    fix = ("free space (or raise the file size limit) and rerun" if any(
        w in cause for w in ("space", "too large", "quota")) else
           f"make {self.directory} writable and rerun" if any(
               w in cause for w in ("ermission", "ead-only", "not permitted")) else
           "check the storage and rerun")
    return f"saving checkpoint step {step} failed: {cause}; {kept}; {fix}"

  def wait(self) -> None:
    """Wait for the save in flight (its storage error as a CheckpointError)."""
    if self._failed:
      return
    with self._saving(None):
      self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restore `state` into abstract_state's shapes and shardings (and the data iterator)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    _quiet_closed_loop_callbacks()  # a corrupt step fails with reads still in flight
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax/tensorstore errors are long; keep the cause's first line
      self._check_still_there(step)
      first = _first_line(e)
      others = [s for s in self.all_steps() if s != step]
      hint = (f"move {self.directory}/{step} aside (out of {self.directory}) to fall back to "
              f"step {max(others)}" if others else
              f"move {self.directory} aside and train again")
      raise CheckpointError(f"checkpoint step {step} in {self.directory} is corrupt or "
                            f"incomplete ({type(e).__name__}: {first}); {hint}") from None
    return out["state"]

  def restore_config(self, step: int) -> ml_collections.ConfigDict:
    path = epath.Path(self.directory) / str(step) / "config"
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      return ml_collections.ConfigDict(_tuples(out["config"]))
    except Exception as e:
      self._check_still_there(step)
      raise CheckpointError(f"cannot read the config of checkpoint step {step} at {path} "
                            f"({type(e).__name__}); the checkpoint is incomplete or corrupt: "
                            "move it aside or pick another step") from None

  def _check_still_there(self, step: int) -> None:
    if not os.path.isdir(os.path.join(self.directory, str(step))):
      raise StepVanished(f"checkpoint step {step} in {self.directory} was deleted while it was "
                         "read (the run writing there keeps only its last checkpoint.keep "
                         "steps); read the latest step again")

  def close(self):
    """Wait for the save in flight, then close (a failed save was reported already)."""
    try:
      self.wait()
    finally:
      if self._failed:
        try:
          self.manager.close()
        except Exception:  # pylint: disable=broad-except  (the failed save, reported)
          pass
      else:
        self.manager.close()


def _await_tmp_cleanup(manager) -> None:
  """Wait for the clean-up of unfinished temporary step directories that orbax starts in a
  background thread when a manager opens. orbax itself waits for it only before the first
  save, and `close()` does not: a run that stops earlier (a bad init_from, a data error) exits
  with the thread still running, and Python's shutdown makes it print a 'cannot schedule new
  futures after shutdown' traceback after the one-line error."""
  cleanup = getattr(manager, "_cleanup_tmp_directory_future", None)
  if cleanup is not None:
    cleanup.result()
    manager._cleanup_tmp_directory_future = None  # pylint: disable=protected-access


class _DropOrbaxReadTasks(logging.Filter):
  """asyncio's 'Task (or Future) exception was never retrieved' for orbax's failed reads."""

  def filter(self, record):
    msg = record.getMessage()
    if "exception was never retrieved" not in msg.split("\n", 1)[0]:
      return True
    # The repr names orbax only sometimes; the traceback's frames always do.
    tb = record.exc_info[2] if record.exc_info else None
    files = []
    while tb is not None:
      files.append(tb.tb_frame.f_code.co_filename)
      tb = tb.tb_next
    return not ("orbax" in msg or any("orbax" in f for f in files))


def _quiet_closed_loop_callbacks() -> None:
  """Installed before a restore. When a restore fails (a truncated array file), tensorstore
  still finishes the reads that were in flight. Their callbacks reach orbax's event loop after
  it closed (`RuntimeError: Event loop is closed`), and orbax's other read tasks, failed too,
  are dropped unawaited. Python prints each as an unraisable exception or an asyncio log
  record, a traceback after the one-line error. Drop exactly those; every other unraisable
  exception and log record goes where it went before."""
  previous = sys.unraisablehook
  if getattr(previous, "_mmjax_quiet", False):
    return

  def hook(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
      return
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
      return
    previous(unraisable)

  hook._mmjax_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_DropOrbaxReadTasks())


_STORAGE_WORDS = ("No space left", "File too large", "Permission denied", "Read-only file system",
                  "Disk quota exceeded", "Operation not permitted", "No such file or directory")


def storage_error(e: BaseException) -> Optional[str]:
  """'<cause> (<path>)' when `e` (or what caused it) is a storage fault of a write, else None.
  tensorstore reports errno as os_error_code='N' inside a ValueError's text."""
  seen = 0
  while e is not None and seen < 8:
    if isinstance(e, OSError) and e.errno and e.errno != errno.EEXIST:
      where = f" ({e.filename})" if e.filename else ""
      return f"{os.strerror(e.errno)}{where}"
    text = str(e)
    code = re.search(r"os_error_code='(\d+)'", text)
    path = re.search(r'(?:Failed writing|Error writing[^"]*"[^"]*" in OCDBT database at local '
                     r'file): "([^"]+)"', text)
    words = next((w for w in _STORAGE_WORDS if w in text), None)
    if code or words:
      cause = os.strerror(int(code.group(1))) if code else words
      return f"{cause}" + (f" ({path.group(1)})" if path else "")
    e, seen = e.__cause__ or e.__context__, seen + 1
  return None


def _committed_steps(directory: str):
  """The committed step directories (orbax renames a step's temporary directory on commit)."""
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []


class _DropFailedWrites(logging.Filter):
  """orbax's ERROR records (and their tracebacks) of a write that failed on storage: save()
  reports that failure once, as a CheckpointError."""

  def filter(self, record):
    if record.levelno < logging.ERROR or "orbax" not in (record.pathname or ""):
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return storage_error(exc) is None and not any(
        w in record.getMessage() for w in ("os_error_code", *_STORAGE_WORDS))


def _quiet_failed_writes() -> None:
  """Install _DropFailedWrites on the loggers orbax writes to (once), and the restore's
  closed-loop quieting (a failed write leaves the same unretrieved tasks behind)."""
  for name in ("absl", ""):
    log = logging.getLogger(name)
    if not any(isinstance(f, _DropFailedWrites) for f in log.filters):
      log.addFilter(_DropFailedWrites())
    for h in log.handlers:
      if not any(isinstance(f, _DropFailedWrites) for f in h.filters):
        h.addFilter(_DropFailedWrites())
  _quiet_closed_loop_callbacks()


def _first_line(e: BaseException) -> str:
  """The first line of an (often long) orbax / tensorstore error, at most 200 characters."""
  text = str(e).strip()
  if not text:
    return type(e).__name__
  return text.splitlines()[0].split(" See full TensorStore details")[0][:200]


def _tuples(x: Any) -> Any:
  """JSON lists back to tuples (configs use tuples for shapes and grids)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def find_checkpoint(workdir: Optional[str] = None, checkpoint: Optional[str] = None):
  """(Checkpointer, step) for --workdir (latest step) or --checkpoint=DIR/checkpoints/STEP."""
  if checkpoint:
    path = epath.Path(checkpoint)
    if not path.exists():
      raise CheckpointError(f"checkpoint {checkpoint} does not exist; pass an existing "
                            "<workdir>/checkpoints/<step> directory")
    if path.name.isdigit():
      ckpt = Checkpointer(str(path.parent), read_only=True)
      return ckpt, int(path.name)
    ckpt = Checkpointer(str(path), read_only=True)
  else:
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
      raise CheckpointError(f"no checkpoint in {workdir}: {directory} does not exist; train "
                            f"first with train.py --workdir={workdir}")
    ckpt = _open_live(directory)
  step = ckpt.latest_step()
  if step is None:
    raise CheckpointError(f"no committed checkpoint in {ckpt.directory}; train first (or "
                          "wait for the first checkpoint.every_steps)")
  return ckpt, step


def _open_live(directory: str) -> "Checkpointer":
  """A read-only Checkpointer of a directory a live run may be writing: opening lists every
  step and reads its metadata, and a step the writer's keep policy deletes meanwhile fails
  that listing (FileNotFoundError), so it is listed again; StepVanished if it keeps moving."""
  for _ in range(5):
    try:
      return Checkpointer(directory, read_only=True)
    except FileNotFoundError:
      if not os.path.isdir(directory):
        raise
  raise StepVanished(f"the steps of {directory} were deleted while they were listed, five "
                     "times (a run writing there keeps only its last checkpoint.keep steps); "
                     "read again, or evaluate a copy of one step")


def locate(path: str, what: str = "checkpoint"):
  """(Checkpointer, step) of a workdir (its latest committed step), its checkpoints directory,
  or one step directory <workdir>/checkpoints/<step>; `what` names the setting in errors."""
  if not path or not os.path.exists(path):
    raise CheckpointError(f"{what} {path!r} does not exist; pass an mmjax workdir or a "
                          "<workdir>/checkpoints/<step> directory")
  try:
    if os.path.isdir(checkpoint_dir(path)):
      return find_checkpoint(workdir=path)
    return find_checkpoint(checkpoint=path)
  except CheckpointError as e:
    raise CheckpointError(f"{what}: {e}") from None
  except Exception as e:  # an unreadable directory: orbax's errors are long
    raise CheckpointError(f"{what} {path} is not a readable checkpoint ({type(e).__name__}); "
                          "pass an mmjax workdir or a <workdir>/checkpoints/<step> "
                          "directory") from None


def _key(k) -> str:
  for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _name(keys) -> str:
  """'embed_image/proj/kernel' for a parameter's keys (without the 'params' collection)."""
  keys = [str(k) for k in keys]
  return "/".join(keys[1:] if len(keys) > 1 and keys[0] == "params" else keys)


def restore_params(path: str, params, what: str = "init_from"):
  """The parameters of the checkpoint at `path` (see `locate`) restored into `params`
  (TrainState.params: {'params': {...}}, arrays or ShapeDtypeStructs whose shardings and
  dtypes the restored ones take), reading nothing else. A parameter the checkpoint lacks is
  returned as given; one of another shape is a one-line CheckpointError.

  Returns (params, missing names, count of checkpoint parameters this model does not use,
  the step directory read)."""
  ckpt, step = locate(path, what)
  step_dir = epath.Path(ckpt.directory) / str(step)
  ckpt.close()
  handler = ocp.PyTreeCheckpointHandler()
  try:
    try:
      saved = handler.metadata(step_dir / "state").tree["params"]
    except Exception as e:
      raise CheckpointError(f"{what}: {step_dir} has no readable parameters "
                            f"({type(e).__name__}); it is incomplete or corrupt, or not an "
                            "mmjax checkpoint") from None
    saved = {tuple(str(k) for k in keys): m for keys, m in ocp.tree.to_flat_dict(saved).items()}
    flat = {tuple(_key(k) for k in keys): x
            for keys, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = [_name(k) for k in flat if k not in saved]
    for k, x in flat.items():
      shape = tuple(getattr(saved.get(k), "shape", None) or ())
      if k in saved and shape != tuple(x.shape):
        raise CheckpointError(
            f"{what}: parameter {_name(k)} has shape {shape} in {step_dir} but "
            f"{tuple(x.shape)} in this model; make the model config match the checkpoint's "
            f"(saved in {step_dir}/config)")
    target = {"params": ocp.tree.from_flat_dict(
        {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
         for k, x in flat.items() if k in saved})}
    _quiet_closed_loop_callbacks()
    try:
      restored = handler.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
          item=target, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target)))["params"]
    except Exception as e:
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise CheckpointError(f"{what}: the parameters in {step_dir} are corrupt or incomplete "
                            f"({type(e).__name__}: {first}); pick another step or "
                            "checkpoint") from None
  finally:
    handler.close()
  got = {tuple(str(k) for k in keys): x for keys, x in ocp.tree.to_flat_dict(restored).items()}
  leaves = [got.get(k, x) for k, x in flat.items()]
  out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)
  unused = sum(1 for k in saved if k not in flat)
  return out, missing, unused, str(step_dir)
