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

import json
import os
from typing import Any, Optional

import grain
import ml_collections
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
  """A missing or unreadable checkpoint, with a one-line message naming the fix."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with mmjax's three items."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = directory
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, config=None, force: bool = False):
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restore `state` into abstract_state's shapes and shardings (and the data iterator)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax/tensorstore errors are long; keep the cause's first line
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      others = [s for s in self.all_steps() if s != step]
      hint = (f"delete {self.directory}/{step} to fall back to step {max(others)}" if others
              else "delete it and train again")
      raise CheckpointError(f"checkpoint step {step} in {self.directory} is corrupt or "
                            f"incomplete ({type(e).__name__}: {first}); {hint}") from None
    return out["state"]

  def restore_config(self, step: int) -> ml_collections.ConfigDict:
    path = epath.Path(self.directory) / str(step) / "config"
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      return ml_collections.ConfigDict(_tuples(out["config"]))
    except Exception as e:
      raise CheckpointError(f"cannot read the config of checkpoint step {step} at {path} "
                            f"({type(e).__name__}); the checkpoint is incomplete or corrupt: "
                            "delete it or pass --config") from None

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


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
    ckpt = Checkpointer(directory, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    raise CheckpointError(f"no committed checkpoint in {ckpt.directory}; train first (or "
                          "wait for the first checkpoint.every_steps)")
  return ckpt, step
