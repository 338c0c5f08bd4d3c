"""Test set-up: CPU only, 8 simulated devices (sharding tests), the suite's XLA flags (mmjax's
XLA:CPU default included; not its malloc settings) and its persistent compilation cache
(tests/process.py), full-precision f32 matmuls, the longest files
scheduled first, and a per-test record of wall and compile seconds (tests/durations.py).

Non-sharded tests simply run on the first device.
"""
from tests import process

process.setup()  # before jax is imported

import jax  # noqa: E402
import pytest  # noqa: E402

from tests import durations  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
durations.listen_for_compiles()


def pytest_collection_modifyitems(config, items):
  """Longest files first (xdist --dist loadfile keeps this order with --no-loadscope-reorder),
  so the heaviest few-test files do not start last and run with one worker alone."""
  del config
  order = durations.file_order([item.nodeid.split("::")[0] for item in items])
  items.sort(key=lambda item: order[item.nodeid.split("::")[0]])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  with durations.record(item.nodeid):
    yield
