"""The public API: the README's library example runs as written, and the config loader."""
import pathlib
import re

import numpy as np
import pytest

import mmjax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
  """The python block that follows the '<!-- library example -->' marker in README.md."""
  text = README.read_text()
  m = re.search(r"<!-- library example -->\s*```python\n(.*?)```", text, re.S)
  assert m, "README.md lost its library example"
  return m.group(1)


def test_readme_library_example_runs(capsys):
  code = readme_example()
  assert len(code.strip().splitlines()) <= 10
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # pylint: disable=exec-used
  loss, metrics = scope["loss"], scope["metrics"]
  assert np.isfinite(float(loss))
  assert {"contrastive/loss", "itm/loss", "mlm/loss", "mim/loss"} <= set(metrics)
  total = sum(float(w) * float(metrics[f"{k}/loss"]) for k, w in
              scope["config"].loss_weights.items() if w)
  assert float(loss) == pytest.approx(total, rel=1e-5)
  assert "loss" in capsys.readouterr().out


def test_load_config_by_name_path_and_overrides():
  by_name = mmjax.load_config("fusion/early_concat", {"model.width": 64})
  by_path = mmjax.load_config("configs/fusion/early_concat.py")
  assert by_name.model.fusion == by_path.model.fusion == "early_concat"
  assert by_name.model.width == 64 and by_path.model.width == 128
  with pytest.raises(mmjax.ConfigError, match="unknown config key model.widht"):
    mmjax.load_config("default", {"model.widht": 64})
  with pytest.raises(mmjax.ConfigError, match="not found"):
    mmjax.load_config("nope")


def test_parse_config_is_typed_and_rejects_unknown_keys():
  cfg = mmjax.parse_config(mmjax.load_config("default"))
  assert cfg.model.fusion.name == "hier_multi_to_one" and cfg.model.names == ("image", "text")
  assert cfg.objectives.weight("mlm") == 0.5 and cfg.objectives.weight("sigmoid") == 0.0
  assert mmjax.fusion.design_of(cfg.model).has_towers(cfg.model.names)
  raw = mmjax.load_config("default")
  raw.optimizer.lerning_rate = 1.0
  with pytest.raises(mmjax.ConfigError, match="unknown config key optimizer.lerning_rate") as e:
    mmjax.parse_config(raw)
  assert "\n" not in str(e.value)
