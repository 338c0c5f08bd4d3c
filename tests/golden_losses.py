"""The first three training losses of every config in configs/, as a behaviour fixture.

  python -m tests.golden_losses --write     # record tests/fixtures/golden_losses.json
  python -m tests.golden_losses             # recompute and print the largest difference

Each config runs through `trainer.train` (the function train.py calls) with a global batch of
8, 3 steps, no warm-up (so steps 2 and 3 follow real updates) and the metrics of every step
logged: on one CPU device when its mesh is data-parallel only (the sharded step's equality with
one device is tests/test_train_step.py's and tests/test_captioning.py's), else on 8 simulated
devices with its own mesh (the pod configs: FSDP and tensor parallelism). A config identical to
an earlier one after these cuts (configs/fusion/hier_multi_to_one.py is configs/default.py) is
not trained again: its fixture entry must equal that config's (duplicates()). Configs deeper than 2 layers per stage
or wider than 256 (CLIP ViT-B/16 and the pod configs) are cut to 2 layers per stage and
width 256 (4 heads, MLP 4x; towers of their own width too), so the whole set runs in a few
minutes; their data, resolution, vocabulary, dtypes, scan, remat and mesh stay theirs.
Recorded: the total loss and every objective's loss at steps 1, 2 and 3.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  from tests import process
  process.setup()  # the suite's XLA flags and devices: the fixture is what the tests compute
FIXTURE = ROOT / "tests" / "fixtures" / "golden_losses.json"
STEPS = 3
MAX_DEPTH = 2
MAX_WIDTH = 256


# Configs built from an argument (a workdir to start from, a prepared data folder): their
# own tests cover them (tests/test_init_from.py, tests/test_own_data.py).
PARAMETERIZED = ("configs/finetune.py", "configs/own_data.py")
# Evaluation sets (eval.py --eval_config=...: data / eval overrides, not a model to train);
# tests/test_standard_sets.py covers them.
EVAL_SETS = ("configs/coco_retrieval.py", "configs/flickr30k_retrieval.py",
             "configs/imagenet_zeroshot.py")
PARAMETERIZED += EVAL_SETS


def config_paths():
  """Every config file under configs/ (relative to the repository root), sorted."""
  return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py")
                if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in PARAMETERIZED)


def load(path: str):
  """get_config() of a config file, loaded by path as train.py --config=PATH does."""
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  spec = importlib.util.spec_from_file_location("golden_cfg", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def small(config):
  """The config at a tiny batch, 3 steps, every step logged, depth capped at MAX_DEPTH."""
  config.batch_size = 8
  config.grad_accum_steps = 1
  config.total_steps = STEPS
  config.objectives.starts = {}  # late objectives (SigLIP 2's SILC / TIPS) from step 0
  config.log_every_steps = 1
  config.optimizer.warmup_steps = 0
  config.checkpoint.every_steps = 1000
  config.checkpoint.async_save = False
  config.seed = 0
  depth = config.model.depth
  for k in ("unimodal", "joint", "post", "cross"):
    v = depth.get(k, 0)
    if isinstance(v, int) and v > MAX_DEPTH:
      depth[k] = MAX_DEPTH
  model = config.model
  for node in [model] + [model.modalities[m] for m in model.modalities]:
    if int(node.get("width", 0)) > MAX_WIDTH:
      node.width, node.heads, node.mlp_dim = MAX_WIDTH, 4, 4 * MAX_WIDTH
  return config


def duplicates() -> dict:
  """{path: earlier path} for every config whose small() form equals an earlier config's."""
  first, out = {}, {}
  for path in config_paths():
    key = json.dumps(small(load(path)).to_dict(), sort_keys=True, default=str)
    if key in first:
      out[path] = first[key]
    else:
      first[key] = path
  return out


def data_parallel_only(config) -> bool:
  return int(config.mesh.get("fsdp", 1)) == 1 and int(config.mesh.get("tensor", 1)) == 1


def losses(path: str):
  """{step: {metric: value}} of the loss metrics of the first STEPS steps of `path`."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_default_matmul_precision", "highest")
  from mmjax import trainer  # pylint: disable=import-outside-toplevel
  config = small(load(path))
  devices = jax.devices()[:1] if data_parallel_only(config) else None
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train(config, workdir, log_to_stdout=False, devices=devices)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"),
                                              encoding="utf-8")]
  return {str(r["step"]): {k: v for k, v in r.items() if k == "loss" or k.endswith("/loss")}
          for r in rows}


def main(argv):
  results, same = {}, duplicates()
  for path in config_paths():
    t = time.perf_counter()
    results[path] = results[same[path]] if path in same else losses(path)
    print(f"{path} ({time.perf_counter() - t:.0f} s)", json.dumps(results[path]), flush=True)
  if "--write" in argv:
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
  elif FIXTURE.exists():
    want = json.loads(FIXTURE.read_text())
    diff = max(abs(results[p][s][k] - want[p][s][k]) for p in want for s in want[p]
               for k in want[p][s])
    print(f"largest difference from {FIXTURE.name}: {diff:.3g}")


if __name__ == "__main__":
  main(sys.argv[1:])
