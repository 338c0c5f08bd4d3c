"""A pretraining objective added in one file (tests/custom_objective_plugin.py) through the
registry and the config's `imports` key: train.py trains it beside contrastive alignment and
checkpoints its head, eval.py restores that model, and a fusion without the capability it
declares is refused with one line, each as a subprocess."""
import json
import os

import pytest

from mmjax import objectives
from mmjax.restore import restore
from tests import custom_objective_config
from tests.helpers import run_entry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=tests/custom_objective_config.py"
WEIGHTS = dict(custom_objective_config.get_config().loss_weights)


_run = run_entry


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("custom_objective")
  r = _run(["train.py", CONFIG, f"--workdir={w}"])
  assert r.returncode == 0, r.stderr[-3000:]
  return w


def test_train_py_trains_the_custom_objective(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8")]
  train = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  for r in train:
    assert {"cross_predict/loss", "cross_predict/cosine", "contrastive/loss"} <= set(r), r
    assert r["cross_predict/loss"] == pytest.approx(1.0 - r["cross_predict/cosine"], abs=1e-5)
    # the total is the weighted sum of every objective's loss, the new one included
    parts = sum(w * r[f"{k}/loss"] for k, w in WEIGHTS.items() if w > 0)
    assert r["loss"] == pytest.approx(parts, rel=1e-4), r
  # the predictor learns: its cosine to the (fixed) target rises over six steps
  assert train[-1]["cross_predict/cosine"] > train[0]["cross_predict/cosine"] + 0.05, train


def test_its_head_is_checkpointed_and_eval_py_restores_it(workdir, tmp_path):
  _, _, params, _, step = restore(str(workdir))
  head = params["params"]["cross_predict_head"]
  assert step == 6
  assert head["kernel"].shape == (32, 32)
  r = _run(["eval.py", f"--workdir={workdir}", f"--out={tmp_path}"])
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["step"] == 6 and "retrieval/a2b_R@1" in res, res


def test_a_design_without_the_capability_is_refused_in_one_line(tmp_path):
  r = _run(["train.py", CONFIG, f"--workdir={tmp_path}", "--config.model.fusion=early_concat",
            "--config.model.depth.unimodal=0",
            "--config.loss_weights.contrastive=0", "--config.loss_weights.itm=0"])
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  line = r.stderr.strip().splitlines()[-1]
  assert "objective 'cross_predict' is not available with fusion 'early_concat'" in line, line
  assert "loss_weights.cross_predict=0" in line, line
  assert not os.path.exists(tmp_path / "checkpoints")


def test_registered_beside_the_builtins_and_not_twice():
  from mmjax import plugins  # pylint: disable=import-outside-toplevel
  plugins.load_all(["tests/custom_objective_plugin.py"])
  assert "cross_predict" in objectives.names() and "cross_predict" not in objectives.BUILTIN
  assert objectives.names()[:len(objectives.BUILTIN)] == objectives.BUILTIN
  plugins.load_all(["tests/custom_objective_plugin.py"])  # loaded once per path
  with pytest.raises(ValueError, match="registered twice"):
    objectives.register(type("Again", (objectives.Objective,), {"name": "cross_predict"}))
