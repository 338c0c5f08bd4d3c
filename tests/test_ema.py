"""EMA weights (optimizer.ema_decay): the recurrence over the parameters each step leaves, kept
in the optimizer state (sharded and checkpointed with it), resumed exactly, and evaluated with
eval.use_ema by eval.py and mmjax.load; one-line errors for a bad decay and for use_ema
without EMA parameters."""
import json

import chex
import jax
import numpy as np
import pytest

import mmjax
from mmjax import checkpoint, config_lib, configure, models, sharding, train_lib, trainer
from tests.helpers import random_batch, run_entry, tiny_config
from tests.test_train_loop import _cfg, _one_device

DECAY = 0.8


def test_ema_is_the_recurrence_over_the_parameters_each_step_leaves():
  cfg = tiny_config(**{"loss_weights.itm": 0.0, "optimizer.ema_decay": DECAY,
                       "optimizer.learning_rate": 1e-2})
  model = models.build_model(cfg)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  state, shard = train_lib.create_state(cfg, model, tx, mesh)
  step = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
  want = jax.device_get(state.params)
  chex.assert_trees_all_equal(jax.device_get(train_lib.ema_params(state.opt_state)), want)
  for i in range(3):
    state, _ = step(state, random_batch(cfg, seed=i))
    params = jax.device_get(state.params)
    want = jax.tree.map(lambda e, p: DECAY * e + (1 - DECAY) * p, want, params)
  got = jax.device_get(train_lib.ema_params(state.opt_state))
  chex.assert_trees_all_close(got, want, atol=1e-6)
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), got, params))
  assert max(diff) > 1e-4  # the average lags the parameters: it is not a copy of them
  # evaluation reads the EMA only when asked
  assert train_lib.evaluated_params(configure.resolve(cfg), state) is state.params
  on = configure.resolve(tiny_config(**{"optimizer.ema_decay": DECAY, "eval.use_ema": True}))
  chex.assert_trees_all_equal(jax.device_get(train_lib.evaluated_params(on, state)), got)


def test_ema_resumes_exactly(tmp_path):
  """A run stopped at step 3 and resumed ends on the uninterrupted run's EMA parameters, bit
  for bit, and its in-training evaluations (on the EMA weights) are the same."""
  cfg = _cfg(total_steps=6, **{"optimizer.ema_decay": DECAY, "eval.use_ema": True,
                               "checkpoint.every_steps": 100, "eval.every_steps": 3,
                               "eval.evaluators": ("retrieval",), "eval.num_examples": 16,
                               "eval.batch_size": 8, "loss_weights.itm": 0.0})
  full = _one_device(lambda: trainer.train(cfg, str(tmp_path / "a"), log_to_stdout=False))
  _one_device(lambda: trainer.train(cfg, str(tmp_path / "b"), stop_after=3,
                                    log_to_stdout=False))
  assert checkpoint.Checkpointer(str(tmp_path / "b" / "checkpoints")).latest_step() == 3
  resumed = _one_device(lambda: trainer.train(cfg, str(tmp_path / "b"), log_to_stdout=False))
  ema = lambda r: jax.device_get(train_lib.ema_params(r["state"].opt_state))  # noqa: E731
  chex.assert_trees_all_equal(ema(resumed), ema(full))
  evals = [[json.loads(x) for x in open(tmp_path / w / "metrics.jsonl")
            if "eval/retrieval/a2b_R@1" in x] for w in ("a", "b")]
  assert [e["step"] for e in evals[0]] == [3, 6] and evals[0] == evals[1]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  """A 6-step tiny dual encoder trained with EMA through train.py."""
  workdir = tmp_path_factory.mktemp("ema") / "run"
  r = run_entry(["train.py", "--config=tests/tiny_config.py", f"--workdir={workdir}",
                 "--config.mesh.data=1", "--config.model.fusion=dual_encoder",
                 "--config.loss_weights.itm=0", "--config.loss_weights.mlm=0",
                 "--config.loss_weights.mim=0", "--config.total_steps=6",
                 "--config.optimizer.learning_rate=1e-2", f"--config.optimizer.ema_decay={DECAY}"])
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir


def test_eval_py_and_load_score_the_ema_weights_when_asked(ema_run, tmp_path):
  res = {}
  for use in (False, True):
    r = run_entry(["eval.py", f"--workdir={ema_run}", f"--out={tmp_path / str(use)}",
                   "--evaluators=retrieval", "--config.eval.num_examples=32",
                   f"--config.eval.use_ema={use}"])
    assert r.returncode == 0, r.stderr[-3000:]
    res[use] = json.load(open(tmp_path / str(use) / "results.json"))
  assert res[True]["retrieval/a2b_R@1"] is not None
  assert {k: v for k, v in res[True].items() if isinstance(v, float)} != \
      {k: v for k, v in res[False].items() if isinstance(v, float)}
  raw, ema = mmjax.load(str(ema_run)), mmjax.load(str(ema_run), ema=True)
  ckpt = checkpoint.Checkpointer(str(ema_run / "checkpoints"))
  model = models.build_model(raw.config.model)
  target, _ = train_lib.abstract_state(model, train_lib.make_optimizer(raw.config)[0], raw.mesh)
  stored = jax.device_get(ckpt.restore(6, target))
  ckpt.close()
  chex.assert_trees_all_equal(jax.device_get(ema.params), train_lib.ema_params(stored.opt_state))
  chex.assert_trees_all_equal(jax.device_get(raw.params), stored.params)
  assert np.abs(raw.encode_text(["a red circle"]) - ema.encode_text(["a red circle"])).max() > 0


@pytest.mark.parametrize("args,needle", [
    (["--config.optimizer.ema_decay=1.0"], "optimizer.ema_decay=1.0 must be in [0, 1)"),
    (["--config.eval.use_ema=True"], "eval.use_ema=True needs EMA parameters, and "
                                     "optimizer.ema_decay=0 keeps none")])
def test_bad_ema_settings_are_one_line(tmp_path, args, needle):
  r = run_entry(["train.py", "--config=tests/tiny_config.py", f"--workdir={tmp_path}", *args])
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and needle in lines[-1], r.stderr[-2000:]
  with pytest.raises(config_lib.ConfigError, match=r"\[0, 1\)"):
    configure.resolve(tiny_config(**{"optimizer.ema_decay": -0.1}))
