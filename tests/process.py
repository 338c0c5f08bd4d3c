"""Process settings of the test suite (stdlib only: they must be set before jax is imported).

XLA flags: LLVM's machine-code optimization off (TEST_XLA_FLAGS), and mmjax's XLA:CPU default
(mmjax.platforms.CPU_XLA_FLAGS, appended as apply_cpu_defaults does; `import mmjax` no longer
adds it): the programs the tests compile, tests/fixtures/golden_losses.json's included, are
compiled with it, as a user's train.py run is. The suite's own processes do not take mmjax's
glibc malloc settings (a test worker runs hundreds of programs and would hold its peak heap
to the end: 5.8 GB of RSS measured in one worker); the entry points a test runs as
subprocesses (train.py, eval.py) apply them, as they do for a user. XLA's own HLO passes (fusion,
layout, SPMD partitioning, scheduling) are the ones a user's run gets; skipping LLVM's -O2
halves the compile time of a train step, and compiling is most of the suite's time. Numerics
stay IEEE float32; loops LLVM no longer vectorizes sum in another order.

The persistent compilation cache is shared by every test process and every subprocess a test
starts (it is set through the environment, so children inherit it).

The folder lives outside the clone, so a rerun and a later CI run on the same machine reuse it:
  $MMJAX_TEST_COMPILE_CACHE, or ~/.cache/mmjax/test-compile-cache/<jaxlib>-<cpu>
JAX keys each entry by the program, the jaxlib version, the devices and XLA_FLAGS; the folder
name adds the processor (its model and instruction-set flags), because XLA:CPU compiles for the
host it runs on and JAX's key does not name it: a cache carried to another processor is a new
folder, never a stale hit. A size limit turns on JAX's file lock, so two xdist workers (and
their subprocesses) read and write it safely (without it JAX writes entries in place, and a
reader can meet a half-written file). With the limit on, JAX reads every entry's access time on
each write, so a write costs time in proportion to the entries: only compiles of at least
MIN_COMPILE_S are kept (train steps, forwards; not the thousands of single ops an eager call
compiles in milliseconds). MMJAX_TEST_COMPILE_CACHE=off disables it (the suite must pass cold
too).
"""
import hashlib
import importlib.metadata
import os
import pathlib

MAX_BYTES = 8 << 30
MIN_COMPILE_S = 0.2
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
SIMULATED_DEVICES = 8


def setup() -> None:
  """CPU only, SIMULATED_DEVICES devices (unless XLA_FLAGS names a count), TEST_XLA_FLAGS, the
  XLA:CPU default and the compilation cache, all in os.environ so subprocesses inherit them."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    flags += f" --xla_force_host_platform_device_count={SIMULATED_DEVICES}"
  if "xla_backend_optimization_level" not in flags:
    flags += f" {TEST_XLA_FLAGS}"
  os.environ["XLA_FLAGS"] = with_cpu_xla_flags(flags.strip())
  enable_compile_cache()


def with_cpu_xla_flags(flags: str) -> str:
  """`flags` with mmjax's XLA:CPU default appended (mmjax.platforms.with_cpu_xla_flags: not
  when `flags` sets it, MMJAX_CPU_XLA_DEFAULTS=0 or jaxlib predates it), after the suite's
  flags, where `import mmjax` used to append it: XLA_FLAGS, and with it JAX's compilation
  cache keys, are what they were."""
  from mmjax import platforms  # pylint: disable=import-outside-toplevel  (stdlib only)
  return platforms.with_cpu_xla_flags(flags)


def cpu_key() -> str:
  """A short hash of the first processor's model name and flags (/proc/cpuinfo)."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return "unknown"
  first = {}
  for line in lines:
    if not line.strip():
      break
    k, _, v = line.partition(":")
    first[k.strip()] = v.strip()
  text = "|".join(first.get(k, "") for k in ("vendor_id", "cpu family", "model", "model name",
                                              "flags"))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_folder() -> str | None:
  chosen = os.environ.get("MMJAX_TEST_COMPILE_CACHE")
  if chosen == "off":
    return None
  if chosen:
    return chosen
  try:
    jaxlib = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    jaxlib = "none"
  return os.path.join(os.path.expanduser("~"), ".cache", "mmjax", "test-compile-cache",
                      f"jaxlib{jaxlib}-{cpu_key()}")


def enable_compile_cache() -> None:
  """Points JAX_COMPILATION_CACHE_DIR at cache_folder(), for compiles of MIN_COMPILE_S or more."""
  path = cache_folder()
  if path is None:
    return
  os.makedirs(path, exist_ok=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(MIN_COMPILE_S)
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(MAX_BYTES)
