"""mmjax.bench.pod_compile: the real train step of a tiny config compiled for a TPU v5e 2x2
slice through libtpu's compile-only devices (in a subprocess: no CPU device-count XLA_FLAGS), and
the one-line error of a batch that cannot fit."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pytest.skip("libtpu is not installed")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "mmjax.bench.pod_compile",
                         "--config=tests/tiny_config.py", "--topology=v5e:2x2", *args],
                        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def test_pod_compile_tiny_v5e():
  p = _run("--batch_per_chip=4", "--config.model.dtype=bfloat16")
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
  assert res["chips"] == 4 and res["device_kind"].startswith("TPU v5")
  assert res["batch_size"] == 16 and res["fits"]
  assert 0 < res["mem_per_chip_bytes"] < res["hbm_gib"] * 2 ** 30
  assert res["flops_per_step"] > 0 and res["roofline_step_s_at_100pct"] > 0
  assert res["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}


def test_pod_compile_does_not_fit_one_line():
  p = _run("--batch_per_chip=1000000")
  assert p.returncode != 0
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: does not fit:"), p.stderr[-3000:]
  assert "GiB per chip" in last and "16 GiB HBM" in last and "fsdp" in last
