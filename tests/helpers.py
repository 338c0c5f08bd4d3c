"""Small configs, batches, jitted init/apply and subprocess environments shared by the tests."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mmjax.configs import default
from tests import process


def tiny_config(fusion="hier_multi_to_one", **overrides):
  c = default.get_config()
  c.model.fusion = fusion
  c.model.width, c.model.heads, c.model.mlp_dim, c.model.embed_dim = 32, 4, 64, 32
  c.model.depth.update({"unimodal": 1, "joint": 1, "cross": 1, "post": 1})
  c.model.modalities.image.input_shape = (16, 16, 3)
  c.model.modalities.image.grid = (4, 4)
  c.model.modalities.text.max_len = 12
  c.batch_size = 8
  c.total_steps = 10
  c.optimizer.warmup_steps = 2
  if fusion == "dual_encoder":
    c.loss_weights.itm = 0.0
  apply_overrides(c, overrides)
  return c


def apply_overrides(config, overrides):
  """Set dotted keys ('loss_weights.itm') on a ConfigDict, like --config.KEY=VALUE."""
  for k, v in overrides.items():
    node = config
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return config


def random_batch(config, seed=0, batch_size=None):
  rng = np.random.RandomState(seed)
  b = batch_size or config.batch_size
  h, w, ch = config.model.modalities.image.input_shape
  n = config.model.modalities.text.max_len
  text = rng.randint(5, 261, size=(b, n)).astype(np.int32)
  lengths = rng.randint(4, n, size=b)
  text[np.arange(n)[None] >= lengths[:, None]] = 0
  text[:, 0] = 1
  return {"image": rng.randn(b, h, w, ch).astype(np.float32), "text": text}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int = 1, **extra) -> dict:
  """The environment of an entry point run as a subprocess: CPU, `devices` simulated devices,
  the suite's XLA flags (mmjax's XLA:CPU default included, as tests/process.py sets them) and
  (inherited from os.environ) its persistent compilation cache."""
  flags = f"{process.TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS=process.with_cpu_xla_flags(flags), **extra)


def run_entry(args, devices: int = 1, timeout: int = 600):
  """An entry point (train.py, eval.py, -m mmjax.x) run as a user runs it, from the repository
  root: the CompletedProcess with its stdout and stderr as text."""
  return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=subprocess_env(devices),
                        capture_output=True, text=True, timeout=timeout)


# The reference venv (torch, transformers, open_clip; `make .venv-ref/.stamp`, which make test
# builds) that tests/reference/make_reference.py runs in.
REF_PY = os.environ.get("MMJAX_REFERENCE_PYTHON", os.path.join(ROOT, ".venv-ref", "bin", "python"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """layout -> folder with the reference checkpoint, tokenizer and reference.npz."""
  if not os.path.exists(REF_PY):
    pytest.fail(f"reference venv missing ({REF_PY}); build it with `make .venv-ref/.stamp` "
                "(make test does)")
  made = {}

  def get(layout):
    if layout not in made:
      out = tmp_path_factory.mktemp(layout)
      r = subprocess.run([REF_PY, os.path.join(ROOT, "tests", "reference", "make_reference.py"),
                          layout, str(out)], capture_output=True, text=True, timeout=600)
      assert r.returncode == 0, r.stderr[-3000:]
      made[layout] = out
    return made[layout]
  return get


def grad(fn, *args, **kwargs):
  """jax.grad(fn, ...) as one compiled program (an eager grad compiles each of its ops alone)."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.jit(jax.grad(fn, *args, **kwargs))


def value_and_grad(fn, *args, **kwargs):
  """jax.value_and_grad(fn, ...) as one compiled program."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.jit(jax.value_and_grad(fn, *args, **kwargs))


def init(module, rng, *args, method=None, **kwargs):
  """module.init(rng, *args, ...) as one compiled program (eager init compiles every op)."""
  return _jit_call(module, "init", method, kwargs, rng, *args)


def apply(module, variables, *args, method=None, **kwargs):
  """module.apply(variables, *args, ...) as one compiled program (eager apply compiles every
  op). Arguments that are arrays (or pytrees of them) are traced; anything else (configs,
  Python numbers, None) and every keyword argument is a compile-time constant. The compiled
  function is kept, so a loop of calls with the same shapes compiles once."""
  return _jit_call(module, "apply", method, kwargs, variables, *args)


_JITTED = {}


def _is_traced(x) -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  leaves = jax.tree.leaves(x)
  return bool(leaves) and all(isinstance(l, (jax.Array, np.ndarray)) for l in leaves)


def _jit_call(module, which, method, kwargs, *args):
  import jax  # pylint: disable=import-outside-toplevel
  traced = tuple(i for i, a in enumerate(args) if _is_traced(a))
  static = tuple((i, a) for i, a in enumerate(args) if i not in traced)
  # Keyed by identity; the entry holds its objects, so no id is reused while it lives.
  bound = (id(getattr(method, "__self__", None)), id(getattr(method, "__func__", method)))
  key = (id(module), which, bound, tuple((k, id(v)) for k, v in sorted(kwargs.items())),
         traced, tuple((i, id(a)) for i, a in static))
  if key not in _JITTED:
    box = {}

    def call(*dyn):
      full = dict(static)
      full.update(zip(traced, dyn))
      out = getattr(module, which)(*[full[i] for i in range(len(args))], method=method,
                                   **kwargs)
      # Only arrays leave a compiled function; other output leaves (names) are kept aside.
      leaves, box["tree"] = jax.tree.flatten(out)
      box["arrays"] = [i for i, l in enumerate(leaves) if isinstance(l, jax.Array)]
      box["rest"] = {i: l for i, l in enumerate(leaves) if i not in box["arrays"]}
      return [leaves[i] for i in box["arrays"]]
    _JITTED[key] = (jax.jit(call), box, (module, method, kwargs, static))
  fn, box, _ = _JITTED[key]
  arrays = fn(*[args[i] for i in traced])
  leaves = {**box["rest"], **dict(zip(box["arrays"], arrays))}
  return jax.tree.unflatten(box["tree"], [leaves[i] for i in range(len(leaves))])
