"""Parameter names are a public contract: every checkpoint written so far restores only while
each shipped config's model (and the variants with the other objective heads) keeps exactly
the parameter paths and shapes of tests/fixtures/param_paths.json."""
import json

from tests import param_paths


def test_parameter_paths_and_shapes_are_unchanged():
  want = json.loads(param_paths.FIXTURE.read_text())
  got = param_paths.compute()
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name] == want[name], name
