"""Behaviour is unchanged by refactors: the first three losses of every config in configs/
(tests/golden_losses.py: a batch of 8, fixed seed, one device or the config's own 8-device
mesh) equal the fixture that script records.

Tolerance: XLA:CPU compiles for the processor it runs on, and the same code sums in another
order on another instruction set (AVX2, AVX-512) or with other XLA flags, so the fixture is
reproducible bit for bit only on the machine that wrote it. FLOAT32 and BFLOAT16 below are
several times the largest difference measured between two such builds of the same code
(docs/testing.md, "Golden losses"); a changed loss, mask, initializer or data order moves the
losses far more."""
import json

import pytest

from tests import golden_losses

WANT = json.loads(golden_losses.FIXTURE.read_text())
SAME = golden_losses.duplicates()
FLOAT32 = dict(rel=1e-5, abs=1e-5)
BFLOAT16 = dict(rel=1e-2, abs=1e-2)


def test_fixture_covers_every_config():
  assert sorted(WANT) == golden_losses.config_paths()


def test_identical_configs_are_recorded_once_and_equal():
  """A config equal to an earlier one after the cuts is not trained again; its entry must be
  that config's (so the fixture cannot drift between the two)."""
  assert SAME, "no identical configs: drop this test's reason from golden_losses.duplicates"
  for path, earlier in SAME.items():
    assert WANT[path] == WANT[earlier], (path, earlier)


# over 60 s: configs/pod_fusion_1b.py is a bfloat16 FSDP + tensor-parallel step on 8 devices,
# compiled from nothing when the cache is cold; covering every shipped config is the point.
@pytest.mark.parametrize("path", sorted(p for p in WANT if p not in SAME))
def test_first_three_losses_match_the_fixture(path):
  got = golden_losses.losses(path)
  config = golden_losses.small(golden_losses.load(path))
  tol = BFLOAT16 if config.model.get("dtype", "float32") == "bfloat16" else FLOAT32
  assert sorted(got) == sorted(WANT[path]) == ["1", "2", "3"]
  for step, want in WANT[path].items():
    assert sorted(got[step]) == sorted(want), (path, step)
    for key, value in want.items():
      assert got[step][key] == pytest.approx(value, **tol), (path, step, key)
