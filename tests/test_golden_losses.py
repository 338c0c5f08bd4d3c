"""Behaviour is unchanged by refactors: the first three losses of every config in configs/
(tests/golden_losses.py: a batch of 8, fixed seed, 8 simulated devices) equal the fixture that
script records, to 1e-6. It was first recorded before the fusion-design / typed-config refactor,
and re-recorded when mmjax made XLA:CPU's plain dot path its CPU default (mmjax/platforms.py):
that path rounds differently, which moved the float32 configs' losses by up to 7e-6 and the two
bfloat16 pod configs' by up to 4e-3. Before re-recording, the same code with
MMJAX_CPU_XLA_DEFAULTS=0 reproduced the earlier fixture exactly (largest difference 0)."""
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
      assert got[step][key] == pytest.approx(value, abs=1e-6, rel=0), (path, step, key)
