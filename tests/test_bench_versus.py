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
  # the machine and both stacks are named beside the figures
  cpu = open("/proc/cpuinfo").read()
  assert res["processor"].split(" (")[0] in cpu and ("AVX" in res["processor"]) == ("avx2" in cpu)
  assert res["jax"] and res["torch_version"] and res["open_clip_version"]
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


_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
# Two stand-ins for torchvision: a build matching torch registers its own C++ ops on import
# (the bench must not declare them first), and PyPI's CUDA build beside a CPU torch fails its
# import registering fake kernels for ops that are missing.
_FAKE_TORCHVISION = {
    "matching": ("import torch\n"
                 f"for op in ('nms', 'qnms'):\n  torch.library.define(f'torchvision::{{op}}', "
                 f"'{_SCHEMA}')\nBUILD = 'matching'\n"),
    "mismatched": ("import torch\n"
                   "torch.library.register_fake('torchvision::nms')(lambda *a: None)\n"
                   "BUILD = 'mismatched'\n"),
}


@pytest.mark.skipif(not os.path.exists(REF), reason="no reference venv (.venv-ref)")
@pytest.mark.parametrize("build", sorted(_FAKE_TORCHVISION))
def test_the_torch_side_imports_any_torchvision_build(tmp_path, build):
  pkg = tmp_path / "torchvision"
  pkg.mkdir()
  (pkg / "__init__.py").write_text(_FAKE_TORCHVISION[build])
  code = ("import sys; sys.path.insert(0, sys.argv[1]); import torch, versus_torch; "
          "print(versus_torch.import_torchvision(torch).BUILD)")
  p = subprocess.run([REF, "-c", code, os.path.join(ROOT, "mmjax", "bench")], cwd=tmp_path,
                     env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert p.stdout.split() == [build]
