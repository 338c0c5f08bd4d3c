"""Behaviour is unchanged by refactors: the first three losses of every config in configs/
(tests/golden_losses.py: a batch of 8, fixed seed, 8 simulated devices) equal the fixture that
script recorded before the fusion-design / typed-config refactor, to 1e-5 absolute. The fixture
was recorded with XLA:CPU's YNNPACK dot; mmjax's default CPU dot path (mmjax/platforms.py)
rounds float32 differently, which moves a step-3 loss by about 2e-6."""
import json

import pytest

from tests import golden_losses

WANT = json.loads(golden_losses.FIXTURE.read_text())


def test_fixture_covers_every_config():
  assert sorted(WANT) == golden_losses.config_paths()


@pytest.mark.parametrize("path", sorted(WANT))
def test_first_three_losses_match_the_fixture(path):
  got = golden_losses.losses(path)
  assert sorted(got) == sorted(WANT[path]) == ["1", "2", "3"]
  for step, want in WANT[path].items():
    assert sorted(got[step]) == sorted(want), (path, step)
    for key, value in want.items():
      assert got[step][key] == pytest.approx(value, abs=1e-5, rel=0), (path, step, key)
