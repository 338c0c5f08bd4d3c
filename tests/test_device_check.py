"""bench/device_check.sh, the GPU check run in one go on a lent device, dry-run on the CPU:
the same sequence of bench.step runs on tiny shapes, its flag probe, and its summary."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# over 60 s: the GPU check's whole sequence of bench.step processes (default and tuned flags,
# the batch sweep), each compiling a CLIP step, is what the dry run exists to prove.
def test_device_check_dry_run(tmp_path):
  env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, OUT=str(tmp_path),
             TIMEOUT_SCALE="3")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run(["bash", "bench/device_check.sh"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=900)
  assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
  assert "device check done" in p.stdout
  envtxt = (tmp_path / "env.txt").read_text()
  # The probe keeps the flag this XLA knows and drops the one it does not.
  assert "flag not accepted here: --xla_no_such_flag_for_the_probe=true" in envtxt
  assert "tuned XLA_FLAGS: --xla_cpu_enable_fast_min_max=false" in envtxt
  rows = {r["check"]: r["result"] for r in map(json.loads, open(tmp_path / "summary.jsonl"))}
  assert {"clip_b8_default_flags", "clip_b8_tuned_flags"} <= set(rows), sorted(rows)
  # (python -m mmjax.bench.step adds mmjax's CPU default to either: apply_cpu_defaults)
  assert "fast_min_max" not in rows["clip_b8_default_flags"]["xla_flags"]
  assert rows["clip_b8_tuned_flags"]["xla_flags"].startswith(
      "--xla_cpu_enable_fast_min_max=false")
  for r in rows.values():
    assert r["mfu"] > 0 and r["hfu"] > 0 and r["examples_per_s"] > 0
  assert "faster at batch 8:" in envtxt


def test_device_check_names_a_missing_jax(tmp_path):
  env = dict(os.environ, PYTHON="/bin/false", OUT=str(tmp_path))
  p = subprocess.run(["bash", "bench/device_check.sh"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=60)
  assert p.returncode == 1
  assert p.stdout.strip().splitlines()[-1].startswith("error: /bin/false cannot import jax")
