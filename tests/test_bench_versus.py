"""mmjax.bench.versus, the side-by-side benchmark against open_clip: the reference subprocess
(the .venv-ref that `make test` builds), the JSON a person reads, and its one-line error."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, ".venv-ref", "bin", "python")


def _versus(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "mmjax.bench.versus", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not os.path.exists(REF), reason="no reference venv (.venv-ref)")
def test_both_matmul_peaks_in_one_run():
  p = _versus("--only=matmul")
  assert p.returncode == 0, p.stderr[-2000:]
  res = json.loads(p.stdout.strip().splitlines()[-1])
  assert res["mmjax_matmul_gflops"] > 1 and res["torch_matmul_gflops"] > 1
  assert res["matmul_ratio"] == pytest.approx(
      res["mmjax_matmul_gflops"] / res["torch_matmul_gflops"])
  # The default CPU flag of mmjax/platforms.py is in effect (main() applies apply_cpu_defaults,
  # XLA_FLAGS unset here) and reported.
  assert "--xla_cpu_experimental_ynn_fusion_type=-individual_dot" in res["xla_flags"]
  assert res["mmjax_malloc_defaults"] is True and res["torch_malloc"] is False
  assert "MALLOC_ARENA_MAX" not in res["torch"]["malloc_env"]


@pytest.mark.skipif(not os.path.exists(REF), reason="no reference venv (.venv-ref)")
def test_torch_malloc_gives_open_clip_the_same_settings():
  p = _versus("--only=matmul", "--torch_malloc")
  assert p.returncode == 0, p.stderr[-2000:]
  res = json.loads(p.stdout.strip().splitlines()[-1])
  assert res["torch_malloc"] is True
  assert res["torch"]["malloc_env"]["MALLOC_ARENA_MAX"] == "1"
  assert res["torch"]["malloc_env"]["MALLOC_MMAP_MAX_"] == "0"
  assert "open_clip on" in p.stdout


def test_missing_reference_is_one_line():
  p = _versus("--only=torch", "--torch_python=/nonexistent/python")
  assert p.returncode == 1
  assert "Traceback" not in p.stderr
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --torch_python=/nonexistent/python does not exist"), last
  assert "make .venv-ref/.stamp" in last
