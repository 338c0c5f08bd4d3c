"""config_lib is a leaf: parsing a config imports no jax and no model code, each default is
stated once (a dataclass field), and the cross-layer checks run in configure.resolve."""
import ast
import dataclasses
import glob
import os
import subprocess
import sys

import pytest

from mmjax import config_lib, configure, fusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mmjax modules that parsing may import: the config itself and the data layer's key table
# (the data modules are numpy only). Everything else (models, fusion, layers, ...) is not.
ALLOWED = ("mmjax", "mmjax.config_lib", "mmjax.platforms", "mmjax.plugins", "mmjax.data",
           "mmjax.configs")


def test_parsing_every_shipped_config_imports_no_jax_and_no_model_code():
  """Every shipped training config, loaded and parsed in a fresh process, leaves jax, flax,
  optax, orbax and mmjax's model modules unimported. (finetune.py reads a workdir's saved
  config with the checkpoint reader, so loading it imports orbax itself: it is left out.)"""
  code = f"""
import glob, sys
from mmjax import config_lib
n = 0
for f in sorted(glob.glob({os.path.join(ROOT, 'mmjax/configs/**/*.py')!r}, recursive=True)):
  if f.endswith(("__init__.py", "finetune.py")):
    continue
  try:
    c = config_lib.load_config(f)
  except ValueError:  # standard evaluation sets need their copy on disk as an argument
    continue
  if "model" not in c:
    continue
  try:
    config_lib.parse(c)
  except config_lib.ConfigError as e:
    assert "not found" in str(e), (f, e)  # own data on disk that this machine lacks
  n += 1
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "optax", "orbax")
             or (m.startswith("mmjax") and not m.startswith({ALLOWED!r})))
print(n, [m for m in bad if m.count(".") < 2])
"""
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
  n, bad = r.stdout.strip().split(" ", 1)
  assert int(n) >= 12, r.stdout
  assert bad == "[]", f"parsing a config imported {bad}"


def test_parse_does_not_check_across_layers_and_resolve_does():
  """parse types the sections; an unknown fusion design or embedder option is resolve's."""
  c = config_lib.load_config("default", {"model.fusion": "no_such_design"})
  assert config_lib.parse(c).model.fusion.name == "no_such_design"
  with pytest.raises(config_lib.ConfigError, match="no_such_design"):
    configure.resolve(c)
  c = config_lib.load_config("default")
  c.model.modalities.image.not_an_option = 3
  config_lib.parse(c)
  with pytest.raises(config_lib.ConfigError, match="not_an_option"):
    configure.resolve(c)


def test_resolve_records_embedder_defaults_and_expands_heads():
  from mmjax import objectives, tokenizers  # pylint: disable=import-outside-toplevel
  c = config_lib.load_config("default")
  parsed, resolved = config_lib.parse(c), configure.resolve(c)
  image = parsed.model.modality("image")
  unset = sorted(set(tokenizers.EMBEDDERS["image"].__dataclass_fields__)
                 - set(config_lib.EMBEDDER_OWN) - set(dict(image.options)))
  assert unset  # an option default.py leaves to the embedder
  with pytest.raises(config_lib.ConfigError, match="configure.resolve"):
    image.option(unset[0])
  want = tokenizers.EMBEDDERS["image"].__dataclass_fields__[unset[0]].default
  assert resolved.model.modality("image").option(unset[0]) == want
  assert resolved.model.modality("image").option("patch") == 4  # the config's own value
  assert parsed.model.objective_heads == ("all",)
  assert resolved.model.objective_heads == objectives.default_heads()
  assert resolved.resolved and not parsed.resolved
  assert configure.resolve(resolved) is resolved
  assert configure.resolve(parsed) == resolved  # a parsed Config resolves as its ConfigDict


def _assigned(path):
  """(dotted key, literal value) for every `c.a.b = <literal>` and `c.a.update({...})` of a
  config file (tuple assignments included)."""
  def key(node):
    parts = []
    while isinstance(node, ast.Attribute):
      parts.append(node.attr)
      node = node.value
    return ".".join(reversed(parts)) if isinstance(node, ast.Name) and node.id == "c" else None
  out = []
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Assign):
      for t in node.targets:
        pairs = (zip(t.elts, node.value.elts) if isinstance(t, ast.Tuple)
                 and isinstance(node.value, ast.Tuple) else [(t, node.value)])
        for target, value in pairs:
          try:
            out.append((key(target), ast.literal_eval(value)))
          except ValueError:
            pass
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "update" and node.args and isinstance(node.args[0], ast.Dict)):
      base = key(node.func.value)
      for k, v in zip(node.args[0].keys, node.args[0].values):
        try:
          out.append((f"{base}.{ast.literal_eval(k)}", ast.literal_eval(v)))
        except ValueError:
          pass
  return [(k, v) for k, v in out if k]


@pytest.mark.parametrize("name", ["default", "own_data"])
def test_shipped_configs_set_only_what_differs_from_the_defaults(name):
  """configs/default.py and own_data.py start from base_config() (every key at its dataclass
  default, so every key stays overridable) and assign only values that differ from it."""
  base = config_lib.base_config()
  restated = []
  for k, v in _assigned(os.path.join(ROOT, "mmjax", "configs", f"{name}.py")):
    node = base
    for part in k.split("."):
      node = node.get(part) if hasattr(node, "get") else None
    if node is not None and config_lib._plain(node) == config_lib._plain(v):  # pylint: disable=protected-access
      restated.append(f"{k}={v!r}")
  assert not restated, f"configs/{name}.py restates defaults: {restated}"
  assert set(base.keys()) <= set(config_lib.load_config(name).keys())


def test_the_restated_default_check_sees_assignments(tmp_path):
  f = tmp_path / "cfg.py"
  f.write_text("c.total_steps = 1000\nc.model.width, c.model.heads = 64, 4\n"
               "c.optimizer.update({'b1': 0.9, 'b2': 0.5})\n")
  assert _assigned(f) == [("total_steps", 1000), ("model.width", 64), ("model.heads", 4),
                          ("optimizer.b1", 0.9), ("optimizer.b2", 0.5)]


def test_a_dtype_object_is_stored_by_its_name():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  b = config_lib.BlockConfig(width=8, num_heads=2, mlp_dim=16, dtype=jnp.bfloat16)
  assert b.dtype == "bfloat16" and b == dataclasses.replace(b, dtype="bfloat16")
  with pytest.raises(ValueError, match="float8"):
    config_lib.BlockConfig(width=8, num_heads=2, mlp_dim=16, dtype="float8")
  assert fusion.design_of(config_lib.FusionConfig(name="dual_encoder")).name == "dual_encoder"


CASES = [  # kind, embedder options, input shape (no batch axis)
    ("text", {"max_len": 12}, ()), ("text", {"max_len": 7, "add_cls": True}, ()),
    ("image", {"patch": 4, "grid": (2, 2)}, (16, 8, 3)),
    ("image", {"patch": 2, "add_cls": False}, (6, 4, 1)),
    ("video", {"tubelet": (2, 4, 4), "grid": (2, 2, 2)}, (4, 8, 8, 3)),
    ("audio", {"patch": (4, 2), "grid": (2, 2)}, (16, 8)),
    ("regions", {}, (5,)), ("regions", {"add_cls": False}, ()),
    ("features", {}, (9,)), ("features", {"max_len": 11}, ()),
]


@pytest.mark.parametrize("kind,options,shape", CASES)
def test_embedders_state_their_token_count(kind, options, shape):
  """The arithmetic count (what resolve uses for token lengths) equals the traced output."""
  from mmjax import tokenizers  # pylint: disable=import-outside-toplevel
  block = config_lib.BlockConfig(width=16, num_heads=2, mlp_dim=32)
  channels = {"channels": shape[-1]} if kind in ("image", "video") else {}
  m = configure._modality(config_lib.ModalityConfig(  # pylint: disable=protected-access
      name="m", kind=kind, options=tuple(options.items()), input_shape=shape, **channels))
  assert tokenizers.token_count(m, block) == tokenizers.traced_token_count(m, block)


def test_shipped_configs_token_counts_match_the_traced_embedders():
  from mmjax import tokenizers  # pylint: disable=import-outside-toplevel
  names = ["default", "clip_vit_b16", "pod_clip_vit_l14", "pod_fusion_1b", "coca", "video_order"]
  names += [f"fusion/{n}" for n in fusion.BUILTIN]
  for name in names:
    model = configure.resolve_model(config_lib.load_config(name))
    for m in model.modalities:
      block = m.tower or model.block
      assert tokenizers.token_count(m, block) == tokenizers.traced_token_count(m, block), \
          (name, m.name)


def test_a_shape_the_patch_does_not_divide_is_a_config_error():
  c = config_lib.load_config("default", {"model.modalities.image.input_shape": (30, 32, 3)})
  c.model.fusion = "early_concat"  # bounds nothing; the count itself must fail
  with pytest.raises(config_lib.ConfigError, match="not divisible"):
    configure.resolve(c)
