"""Model FLOPs (MFU) vs hardware FLOPs (HFU): remat and scan change what runs, not the model."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import pytest

from mmjax import configure, sharding, train_lib, trainer
from mmjax.bench import step as bench_step
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _counts(**overrides):
  cfg = configure.resolve(tiny_config(**{"mesh.data": 1, **overrides}))
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh), jax.devices()[:1])
  batch = jax.device_put(bench_step.synthetic_batch(cfg), sharding.batch_sharding(mesh))
  return train_lib.flop_counts(cfg, mesh, batch)


def test_remat_raises_hardware_flops_not_model_flops():
  model, hw = _counts()
  model_r, hw_r = _counts(**{"model.remat": "full"})
  assert model_r == pytest.approx(model, rel=1e-9)  # MFU's count: the same model
  # Full remat recomputes every block's forward in the backward: about one more forward.
  assert hw_r > hw * 1.15, (hw, hw_r)
  assert hw_r - hw < model / 3 * 1.05, (hw, hw_r, model)
  # Without remat, the step's count is about 3 x forward (+ the optimizer's elementwise work).
  assert 0.85 < hw / model < 1.15, (hw, model)


def test_scanned_stack_counted_once_per_layer():
  """XLA counts a while-loop body once; flop_counts unrolls a scanned stack to count it."""
  model, hw = _counts(**{"model.depth.unimodal": 3})
  model_s, hw_s = _counts(**{"model.depth.unimodal": 3, "model.scan": True})
  assert model_s == pytest.approx(model, rel=1e-6)
  assert hw_s == pytest.approx(hw, rel=1e-6)


def test_bench_step_reports_mfu_and_hfu():
  """The CLI a user runs: its JSON line names both, and HFU >= MFU under remat."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  cmd = [sys.executable, "-m", "mmjax.bench.step", "--config=tests/tiny_config.py",
         "--steps=2", "--warmup=1", "--config.model.remat=full", "--config.mesh.data=1"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["remat"] == "full"
  assert res["hw_flops_per_step_per_device"] > 1.1 * res["model_flops_per_step_per_device"]
  assert res["hfu"] > res["mfu"] > 0
  assert res["mfu"] == pytest.approx(
      res["model_flops_per_step_per_device"] / res["step_s"] / 1e12 / res["peak_tflops"])
  assert "MFU" in out.stdout and "HFU" in out.stdout


def test_trainer_logs_mfu_and_hfu(tmp_path, capsys):
  cfg = tiny_config(**{"mesh.data": 1, "model.remat": "full", "total_steps": 2,
                       "log_every_steps": 1, "checkpoint.every_steps": 100})
  trainer.train(cfg, str(tmp_path), devices=jax.devices()[:1])
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert r["hfu"] > r["mfu"] > 0
    assert r["hw_tflops_per_device"] > r["tflops_per_device"] > 0
  summary = capsys.readouterr().out
  assert "GFLOP model (3 x forward)" in summary and "GFLOP hardware" in summary
