"""An evaluator added in one file (tests/custom_evaluator_plugin.py) through the registry and
the config's `imports` key: train.py runs it every eval.every_steps into metrics.jsonl, and
eval.py into results.json, each as a subprocess; a name registered twice and an unknown name
are one-line errors."""
import json
import os

import pytest

from mmjax import config_lib, configure, evaluators
from tests.helpers import run_entry, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_run = run_entry


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("custom_eval")
  r = _run(["train.py", "--config=tests/custom_evaluator_config.py", f"--workdir={w}",
            "--config.mesh.data=-1"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "eval        every 2 steps: pair_cosine, caption" in r.stdout, r.stdout[-2000:]
  assert "caption skipped: the model has no captioning decoder" in r.stdout, r.stdout
  return w


def test_train_py_evaluates_every_n_steps(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8")]
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  assert [r["step"] for r in evals] == [2, 4]
  for r in evals:
    assert set(r) == {"step", "eval/pair_cosine/matched", "eval/pair_cosine/mismatched",
                      "eval/pair_cosine/examples"}, r
    assert r["eval/pair_cosine/examples"] == 16
  assert all("loss" in r for r in rows if r not in evals)  # the train records are unchanged


def test_eval_py_runs_the_custom_evaluator(workdir, tmp_path):
  r = _run(["eval.py", f"--workdir={workdir}", f"--out={tmp_path}"])
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["pair_cosine/examples"] == 16 and res["step"] == 4
  assert -1.0 <= res["pair_cosine/matched"] <= 1.0
  assert res["caption/skipped"].startswith("the model has no captioning decoder")
  assert "pair_cosine/matched" in r.stdout  # the printed table
  # the last training evaluation scored the same params on the same examples
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8")]
  last = [r for r in rows if "eval/pair_cosine/matched" in r][-1]
  assert last["eval/pair_cosine/matched"] == pytest.approx(res["pair_cosine/matched"], abs=1e-5)


def test_registry_errors_are_one_line():
  with pytest.raises(ValueError, match="registered twice"):
    @evaluators.register
    class Again(evaluators.Evaluator):  # pylint: disable=unused-variable
      name = "retrieval"
  with pytest.raises(config_lib.ConfigError, match=r"did you mean retrieval\?") as e:
    evaluators.get("retreival")
  assert "\n" not in str(e.value) and "zero_shot" in str(e.value)
  assert evaluators.BUILTIN[:2] == ("zero_shot", "retrieval")


def test_legacy_eval_every_steps_is_read_as_eval_every_steps():
  c = tiny_config()
  c.eval_every_steps = 3
  assert configure.resolve(c).eval.every_steps == 3
  assert configure.resolve(tiny_config()).eval.every_steps == 0
