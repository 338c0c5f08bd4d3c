"""Runs on a machine without TPUs print no libtpu / TPU errors, with libtpu installed (the
test environment has it, for the pod-compile tooling): the entry points leave the TPU backend
out unless the host exposes TPU chips. And mmjax's CPU defaults (an XLA flag, glibc malloc
settings): `import mmjax` and the library calls leave the process as it was (os.environ, malloc,
absl's flags), apply_cpu_defaults() applies them, when they apply, and what the malloc settings
change (page faults per call)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mmjax import platforms
from tests.helpers import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_train_as_the_readme_shows_prints_no_tpu_errors(tmp_path):
  if platforms.has_tpu_devices():
    pytest.skip("this host has TPU chips")
  assert importlib.util.find_spec("libtpu"), "make test installs libtpu (the tpu extra)"
  # One CPU device, as a user has (not the suite's 8 simulated ones), and no JAX_PLATFORMS.
  env = {k: v for k, v in subprocess_env(devices=1).items() if k != "JAX_PLATFORMS"}
  # The README's command (".venv/bin/python train.py --config=configs/default.py
  # --workdir=..."), cut to 2 small steps.
  r = subprocess.run(
      [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={tmp_path / 'w'}",
       "--config.total_steps=2", "--config.batch_size=8", "--config.data.train_examples=64"],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  out = r.stdout + r.stderr
  assert r.returncode == 0, out[-3000:]
  assert "done: step 2/2" in out
  assert "over 1 cpu device(s)" in out, out[-3000:]
  bad = [l for l in out.splitlines() if "tpu" in l.lower() or "TPU_" in l]
  assert not bad, bad[:5]


def test_platform_choice(monkeypatch):
  monkeypatch.setattr(platforms, "has_tpu_devices", lambda: True)
  assert platforms.default_platforms() == ""  # a TPU host: JAX chooses, TPU first
  monkeypatch.setattr(platforms, "has_tpu_devices", lambda: False)
  monkeypatch.setattr(platforms.os.path, "exists", lambda p: False)
  assert platforms.default_platforms() == "cpu"
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  platforms.set_default_platforms()
  assert os.environ["JAX_PLATFORMS"] == "cuda"  # what the user set is kept


def test_default_cpu_xla_flag(monkeypatch):
  """set_default_xla_flags (apply_cpu_defaults) adds XLA:CPU's plain-dot flag, unless opted out
  or set by the user."""
  flag = platforms.CPU_XLA_FLAGS[0]
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  platforms.set_default_xla_flags()
  assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {flag}"
  platforms.set_default_xla_flags()  # idempotent
  assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  platforms.set_default_xla_flags()  # the user's own value wins
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("MMJAX_CPU_XLA_DEFAULTS", "0")
  platforms.set_default_xla_flags()
  assert os.environ["XLA_FLAGS"] == ""


# A library user's program: what it sees of the process before and after mmjax's calls. Every
# ctypes lookup of mallopt is recorded, as is set_default_malloc's own record of applying it.
_LIBRARY_USER = """
import ctypes, json, os, sys
mallopt_lookups = []
class _CDLL(ctypes.CDLL):
  def __getitem__(self, name):  # CDLL.__getattr__ looks symbols up through it
    if name == "mallopt":
      mallopt_lookups.append(name)
    return super().__getitem__(name)
ctypes.CDLL = _CDLL
before = dict(os.environ)
import mmjax
if sys.argv[1] == "apply":
  mmjax.platforms.apply_cpu_defaults()
  mmjax.platforms.apply_cpu_defaults()  # idempotent
import jax
config = mmjax.load_config("default", {"batch_size": 2, "model.width": 32, "model.mlp_dim": 64,
                                       "model.embed_dim": 32, "model.depth.unimodal": 1,
                                       "model.depth.joint": 1})
model = mmjax.build_model(config)
params = mmjax.init_params(model, jax.random.key(0))
assert jax.tree.leaves(params)
from absl import flags
after = dict(os.environ)
print(json.dumps({
    "changed": {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)},
    "malloc_applied": mmjax.platforms.malloc_defaults_applied,
    "mallopt_lookups": len(mallopt_lookups), "absl_parsed": flags.FLAGS.is_parsed()}))
"""


def _library_user(mode: str) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in platforms.MALLOC_ENV + ("GLIBC_TUNABLES", "MMJAX_CPU_MALLOC_DEFAULTS",
                                             "MMJAX_CPU_XLA_DEFAULTS")}
  # CPU only (so the malloc settings would apply) and XLA_FLAGS without mmjax's flag.
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS=" ".join(
      f for f in os.environ.get("XLA_FLAGS", "").split() if f not in platforms.CPU_XLA_FLAGS))
  p = subprocess.run([sys.executable, "-c", _LIBRARY_USER, mode], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


def test_import_and_library_calls_change_nothing_in_the_process():
  """`import mmjax`, load_config, build_model and init_params leave os.environ (all of it,
  XLA_FLAGS included) as it was, never look up mallopt, and leave absl's flags unparsed."""
  res = _library_user("library")
  assert res["changed"] == {}
  assert res["malloc_applied"] is False and res["mallopt_lookups"] == 0
  assert res["absl_parsed"] is False


def test_apply_cpu_defaults_sets_them():
  """mmjax.platforms.apply_cpu_defaults(), called twice: the XLA:CPU flag appended to
  XLA_FLAGS once (where this jaxlib takes it) and the malloc settings applied once."""
  res = _library_user("apply")
  if platforms._jaxlib_has_ynn():  # pylint: disable=protected-access
    assert list(res["changed"]) == ["XLA_FLAGS"], res["changed"]
    before, after = res["changed"]["XLA_FLAGS"]
    assert after == f"{before} {platforms.CPU_XLA_FLAGS[0]}".strip()
  else:
    assert res["changed"] == {}
  assert res["malloc_applied"] is True and res["mallopt_lookups"] == 1
  assert res["absl_parsed"] is False


# A program whose 128 MiB intermediate (the transposed copy) XLA:CPU allocates on every call.
_FAULTS = """
import resource, sys
from mmjax import platforms
platforms.apply_cpu_defaults()  # as the entry points do, before jax
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.tanh(x).T @ jnp.ones((x.shape[0],), x.dtype))
x = jnp.ones((4096, 8192), jnp.float32)
for _ in range(15):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x).block_until_ready()
print(platforms.malloc_defaults_applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(**env):
  # Compiled in the child itself: an executable loaded from the suite's persistent compilation
  # cache made ~13k page faults per call even with the settings on (measured; not explained).
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false", **env)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  for k in platforms.MALLOC_ENV + ("MMJAX_CPU_MALLOC_DEFAULTS",):
    if k not in env or env[k] is None:
      env.pop(k, None)
  p = subprocess.run([sys.executable, "-c", _FAULTS], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  applied, faults = p.stdout.split()
  return applied == "True", int(faults)


def test_cpu_malloc_default_stops_per_call_page_faults():
  """With mmjax's malloc settings, a program's large per-call buffers reuse mapped pages; with
  them off (glibc's default: mmap per buffer, munmap on free), each call faults them in anew."""
  on, faults_on = _faults()
  off, faults_off = _faults(MMJAX_CPU_MALLOC_DEFAULTS="0")
  assert on and not off
  assert faults_off > 10 * 128 * 2**20 // 4096 // 2, faults_off  # >= half of the 128 MiB per call
  assert faults_on < faults_off / 4, (faults_on, faults_off)


def test_cpu_malloc_default_conditions(monkeypatch):
  """Not applied when opted out, when the user set glibc's malloc environment, or when JAX may
  use an accelerator; the user's own MALLOC_* settings then stay in charge."""
  monkeypatch.setattr(platforms, "malloc_defaults_applied", False)
  for k in platforms.MALLOC_ENV + ("GLIBC_TUNABLES", "MMJAX_CPU_MALLOC_DEFAULTS"):
    monkeypatch.delenv(k, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not platforms.set_default_malloc()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MMJAX_CPU_MALLOC_DEFAULTS", "0")
  assert not platforms.set_default_malloc()
  monkeypatch.delenv("MMJAX_CPU_MALLOC_DEFAULTS")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  assert not platforms.set_default_malloc()
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
  assert not platforms.set_default_malloc()
  applied, _ = _faults(MALLOC_ARENA_MAX="4")
  assert not applied
  assert not platforms.malloc_defaults_applied


def test_malloc_bench_runs_both_sides():
  """python -m mmjax.bench.malloc: the toy step with the settings on, then off, in one run."""
  p = subprocess.run([sys.executable, "-m", "mmjax.bench.malloc", "--steps=4", "--rows=256",
                      "--width=32"], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  res = json.loads(p.stdout.strip().splitlines()[-1])
  assert res["on"]["applied"] is True and res["off"]["applied"] is False
  for side in ("on", "off"):
    assert res[side]["step_s"] > 0 and res[side]["peak_rss_mib"] > 0
  assert "malloc settings on  (applied: True)" in p.stdout
