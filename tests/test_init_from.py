"""config.init_from (start from a checkpoint's parameters) and config.freeze (LiT-style)."""
import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from mmjax import checkpoint, config_lib, configure, models, sharding, train_lib, trainer
from tests import tiny_config as tiny
from tests.helpers import apply_overrides, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Contrastive (towers) + ITM (through the joint stream): every part trains, little to compile.
SMALL = {"mesh.data": 1, "loss_weights.mim": 0.0, "loss_weights.mlm": 0.0,
         "checkpoint.every_steps": 100, "log_every_steps": 100}


def _cfg(**kw):
  return apply_overrides(tiny.get_config(), {**SMALL, **kw})


def _train(cfg, workdir, **kw):
  return trainer.train(cfg, str(workdir), devices=jax.devices()[:1], **kw)


def _params(tree):
  return jax.device_get(tree)["params"]


def _init_from(cfg, path):
  """cfg's model restored from `path` the way train() starts a fresh run (nothing compiled
  when the checkpoint has every parameter)."""
  c = configure.resolve(cfg)
  model = models.build_model(c.model)
  tx, _ = train_lib.make_optimizer(c)
  mesh = sharding.make_mesh(dataclasses.asdict(c.mesh), jax.devices()[:1])
  target, shard = train_lib.abstract_state(model, tx, mesh)
  # A stand-in for create_state (all ones), so that nothing compiles.
  fresh = lambda: jax.tree.map(lambda t: jax.device_put(np.ones(t.shape, t.dtype), t.sharding),
                               target)
  return trainer.init_from(path, target, tx, shard, fresh)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("a")
  out = _train(_cfg(total_steps=2), workdir, log_to_stdout=False)
  return workdir, _params(out["state"].params)


def test_init_from_restores_params_at_step_0(run_a):
  workdir, a = run_a
  for path in (workdir, workdir / "checkpoints" / "2"):
    state, note = _init_from(_cfg(init_from=str(path)), str(path))
    assert int(state.step) == 0 and "fresh init" not in note
    assert f"{workdir}/checkpoints/2: " in note and "restored" in note
    chex.assert_trees_all_equal(_params(state.params), a)
    assert not any(np.any(x) for x in jax.tree.leaves(jax.device_get(state.opt_state)))
  # A deeper joint stream: the new layer keeps its fresh init and is named once.
  state, note = _init_from(_cfg(**{"model.depth.joint": 2}), str(workdir))
  p = _params(state.params)
  assert "fresh init, not in the checkpoint: fusion/joint/layer_1/" in note, note
  assert "layer_0" not in note.split("fresh init")[1]
  assert all(np.all(x == 1) for x in jax.tree.leaves(p["fusion"]["joint"]["layer_1"]))
  chex.assert_trees_all_equal(p["fusion"]["joint"]["layer_0"], a["fusion"]["joint"]["layer_0"])
  chex.assert_trees_all_equal(p["embed_image"], a["embed_image"])
  # restore_params alone: a parameter the checkpoint lacks comes back as given.
  params = jax.device_put({"params": {**a, "new_head": {"kernel": np.ones((3, 2), np.float32)}}},
                          jax.devices()[0])
  out, missing, unused, _ = checkpoint.restore_params(str(workdir), params)
  assert missing == ["new_head/kernel"] and unused == 0
  np.testing.assert_array_equal(out["params"]["new_head"]["kernel"], np.ones((3, 2)))
  chex.assert_trees_all_equal(jax.device_get(out["params"]["fusion"]), a["fusion"])


def test_freeze_image_and_resume_precedence(run_a, tmp_path, capsys):
  workdir, a = run_a
  cfg = _cfg(total_steps=3, init_from=str(workdir), freeze="image")
  _train(cfg, tmp_path, stop_after=1, log_to_stdout=False)
  out = _train(cfg, tmp_path)  # resumes at step 1: init_from is ignored
  printed = capsys.readouterr().out
  assert "init_from   ignored: resumed from this workdir's step 1" in printed
  assert "resumed     from checkpoint step 1" in printed
  assert "trainable" in printed and "(freeze=image)" in printed
  with open(tmp_path / "metrics.jsonl") as f:
    assert [r["step"] for r in map(json.loads, f)] == [1, 2, 3]
  b = _params(out["state"].params)
  assert out["step"] == 3
  image = ["embed_image", "proj_image"]
  for k in image:
    chex.assert_trees_all_equal(b[k], a[k])
  chex.assert_trees_all_equal(b["fusion"]["tower_image"], a["fusion"]["tower_image"])
  moved = lambda x, y: any(not np.array_equal(u, v)
                           for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
  for k in ("embed_text", "proj_text", "itm_head"):
    assert moved(b[k], a[k]), k
  assert moved(b["fusion"]["tower_text"], a["fusion"]["tower_text"])
  assert moved(b["fusion"]["joint"], a["fusion"]["joint"])
  # Resuming with another freeze is named (the optimizer state's layout differs).
  with pytest.raises(config_lib.ConfigError, match="was trained with freeze='image', this run "
                     "has freeze=''; resume with the same freeze"):
    _train(_cfg(total_steps=4), tmp_path, log_to_stdout=False)
  # No Adam moments for the frozen side.
  names = [train_lib.param_name(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(out["state"].opt_state)[0]]
  assert not any(s in n for n in names for s in ("embed_image", "tower_image", "proj_image"))
  assert any("tower_text" in n for n in names)


def test_freeze_errors():
  with pytest.raises(config_lib.ConfigError, match="freeze entry 'imag' matches no parameter; "
                     "use a modality name \\(image, text\\)"):
    c = configure.resolve(_cfg(freeze="text,imag"))
    train_lib.frozen_mask(c, {"params": {"embed_text": {"w": np.zeros(2)}}})
  c = configure.resolve(_cfg(freeze="image, fusion/joint"))
  assert c.freeze == ("image", "fusion/joint")


def _cli(args):
  env = subprocess_env(devices=1)
  r = subprocess.run([sys.executable, "train.py", "--config=tests/tiny_config.py", *args],
                     cwd=ROOT, env=env, capture_output=True, text=True)
  assert r.returncode != 0, r.stdout[-2000:]
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  return errors[0]


def test_init_from_errors_are_one_line(run_a, tmp_path):
  workdir, _ = run_a
  line = _cli([f"--workdir={tmp_path / 'w'}", "--config.model.width=64",
               "--config.model.mlp_dim=128", f"--config.init_from={workdir}"])
  assert "init_from: parameter " in line and "(32,)" in line and "(64,)" in line, line
  line = _cli([f"--workdir={tmp_path / 'x'}", f"--config.init_from={tmp_path / 'nothing'}"])
  assert "does not exist" in line, line
