"""Readers of a workdir a live run writes (mmjax.checkpoint.find_checkpoint, behind eval.py and
mmjax.load): a step the writer's keep policy deletes between the listing of the steps and the
read of its metadata is listed again, never an error. (The live race through train.py and
eval.py: tests/test_train_loop.py.)"""
import os
import shutil

import numpy as np
import pytest
from orbax.checkpoint._src.path import step as orbax_step

from mmjax import checkpoint


def _workdir_with_steps(tmp_path, steps):
  workdir = str(tmp_path / "run")
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=10, async_save=False)
  for s in steps:
    ckpt.save(s, {"w": np.full((2,), float(s), np.float32)})
  ckpt.close()
  return workdir


def _delete_after_listing(monkeypatch, steps):
  """The writer's keep policy, at the worst moment: each step of `steps` in turn is deleted
  just after orbax listed it as committed and before it reads the step's metadata (one step
  per listing of the directory)."""
  fmt = orbax_step._StandardNameFormat  # pylint: disable=protected-access
  glob, build = fmt._glob_step_paths, fmt._build_metadata  # pylint: disable=protected-access
  targets, this_listing = [str(s) for s in steps], []

  def listing(self, base_path):
    paths = glob(self, base_path)
    this_listing[:] = targets[:1]
    return paths

  def racing_build(self, step_path, step=None):
    metadata = build(self, step_path, step)
    if metadata is not None and step_path.name in this_listing:
      this_listing.clear()
      targets.pop(0)
      shutil.rmtree(str(step_path))
    return metadata

  monkeypatch.setattr(fmt, "_glob_step_paths", listing)
  monkeypatch.setattr(fmt, "_build_metadata", racing_build)


def test_a_step_deleted_while_listed_is_listed_again(tmp_path, monkeypatch):
  workdir = _workdir_with_steps(tmp_path, [2, 4, 6])
  _delete_after_listing(monkeypatch, [2])
  ckpt, step = checkpoint.find_checkpoint(workdir)
  try:
    assert step == 6 and ckpt.all_steps() == [4, 6]
    state = ckpt.restore(step, {"w": np.zeros((2,), np.float32)})
    np.testing.assert_array_equal(state["w"], [6.0, 6.0])
  finally:
    ckpt.close()


def test_steps_that_keep_vanishing_are_one_clear_error(tmp_path, monkeypatch):
  workdir = _workdir_with_steps(tmp_path, [2, 4, 6, 8, 10, 12])
  _delete_after_listing(monkeypatch, [2, 4, 6, 8, 10])
  with pytest.raises(checkpoint.StepVanished, match="deleted while they were listed"):
    checkpoint.find_checkpoint(workdir)
  assert sorted(os.listdir(checkpoint.checkpoint_dir(workdir))) == ["12"]
