"""Every parameter path (and shape) of every shipped config's model, as a fixture: a change
that renames a parameter would stop existing checkpoints from restoring.

  python -m tests.param_paths --write   # record tests/fixtures/param_paths.json
  python -m tests.param_paths           # print the paths that differ

Shapes come from jax.eval_shape of the model's init (nothing is computed), with every
objective head the config's loss weights build.
"""
from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  from tests import process
  process.setup()
FIXTURE = ROOT / "tests" / "fixtures" / "param_paths.json"


def param_shapes(config):
  """{'a/b/kernel': [shape...]} of the model built from `config` (a ConfigDict)."""
  import flax
  import jax
  import mmjax
  from mmjax import models
  model = mmjax.build_model(config)
  batch = models.dummy_batch(model.cfg, 2)
  shapes = jax.eval_shape(lambda r: model.init(r, batch, method=model.init_all),
                          jax.random.key(0))
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(shapes["params"]), sep="/")
  return {k: list(v.shape) for k, v in sorted(flat.items())}


def variants():
  """Models with the heads no shipped config trains: {name: ConfigDict}."""
  from mmjax.configs import default
  every = default.get_config()
  every.loss_weights.update({"sigmoid": 1.0, "caption": 1.0, "prefix_lm": 1.0,
                             "sentence_order": 1.0})
  regions = default.get_config()
  regions.model.fusion = "early_concat"
  regions.model.modalities = {
      "regions": {"kind": "regions", "feature_dim": 16, "region_classes": 5,
                  "input_shape": (10,)},
      "text": {"kind": "text", "vocab_size": 261, "max_len": 12}}
  regions.loss_weights = {"contrastive": 0.0, "mlm": 1.0, "mim": 0.0, "itm": 1.0, "mrc": 1.0,
                          "mrfr": 1.0}
  del regions["data"]
  return {"variant:default+sigmoid+caption+prefix_lm+sentence_order": every,
          "variant:regions+mrc+mrfr": regions}


def compute():
  from tests import golden_losses
  out = {p: param_shapes(golden_losses.load(p)) for p in golden_losses.config_paths()}
  out.update({k: param_shapes(v) for k, v in variants().items()})
  return out


def main(argv):
  got = compute()
  if "--write" in argv:
    FIXTURE.write_text(json.dumps(got, indent=0, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({sum(len(v) for v in got.values())} parameters)")
    return 0
  want = json.loads(FIXTURE.read_text())
  bad = 0
  for path in sorted(set(want) | set(got)):
    a, b = want.get(path, {}), got.get(path, {})
    for k in sorted(set(a) | set(b)):
      if a.get(k) != b.get(k):
        bad += 1
        print(f"{path}: {k}: fixture {a.get(k)} now {b.get(k)}")
  print(f"{bad} difference(s)")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
