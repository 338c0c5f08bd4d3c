"""mmjax.bench.pod_compile: the real train step of a tiny config compiled for a TPU v5e 2x2
slice through libtpu's compile-only devices (in a subprocess: no CPU device-count XLA_FLAGS), and
the one-line error of a batch that cannot fit."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 64x64 images in a 16x16 grid: 256 patches + CLS = 257 image tokens, head_dim 128 / 2 = 64, so
# attention impl `auto` resolves to splash (pallas_tpu) for the image tower on TPU; the 12 text
# tokens stay on xla.
LONG_IMAGE = ("--config.model.width=128", "--config.model.heads=2",
              "--config.model.modalities.image.input_shape=(64,64,3)",
              "--config.model.modalities.image.grid=(16,16)", "--config.data.image_size=64")


def _run(*args):
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "mmjax.bench.pod_compile",
                         "--config=tests/tiny_config.py", "--topology=v5e:2x2", *args],
                        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)


def test_pod_compile_tiny_v5e_splash():
  p = _run("--batch_per_chip=4", "--config.model.dtype=bfloat16", "--config.model.remat=full",
           *LONG_IMAGE)
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
  assert res["chips"] == 4 and res["device_kind"].startswith("TPU v5")
  assert res["batch_size"] == 16 and res["fits"]
  assert 0 < res["mem_per_chip_bytes"] < res["hbm_gib"] * 2 ** 30
  assert res["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  # The step lowered for the TPU mesh picks splash for the 257-token image tower.
  assert any(a.startswith("pallas_tpu ") and "head_dim=64" in a for a in res["attention"]), res
  assert any(a.startswith("xla ") for a in res["attention"]), res  # the 12 text tokens
  assert res["lowered_tpu_custom_calls"] > 0
  assert "attention backends" in p.stderr and "pallas_tpu" in p.stderr
  # Model FLOPs (3 x forward) <= hardware FLOPs (remat recompute + optimizer).
  assert 0 < res["model_flops_per_step"] <= res["hw_flops_per_step"] == res["flops_per_step"]
  assert res["roofline_step_s_at_100pct"] >= res["model_roofline_step_s_at_100pct"] > 0
  assert res["est_step_s"] > 0 and res["est_bound"] in ("compute", "memory")
  assert res["est_step_s"] >= res["roofline_step_s_at_100pct"] * (1 - 1e-9)
  assert 0 < res["est_mfu"] <= res["est_hfu"] <= 1.0 + 1e-9


def test_pod_compile_does_not_fit_one_line():
  p = _run("--batch_per_chip=1000000")
  assert p.returncode != 0
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: does not fit:"), p.stderr[-3000:]
  assert "GiB per chip" in last and "16 GiB HBM" in last and "fsdp" in last
