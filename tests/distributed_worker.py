"""One process of the 2-process test (or the 1-process reference): 3 train steps, print losses.

  python tests/distributed_worker.py DEVICES_PER_PROCESS  (+ MMJAX_COORDINATOR etc. in env)
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[1]}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from mmjax import models, sharding, train_lib  # noqa: E402
from mmjax.data import pipeline  # noqa: E402
from tests.helpers import random_batch, tiny_config  # noqa: E402


def main():
  sharding.initialize_distributed()
  config = tiny_config()
  config.mesh.data, config.mesh.fsdp = 2, -1
  model = models.build_model(config)
  tx, schedule = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  state, shard = train_lib.create_state(config, model, tx, mesh)
  step = train_lib.make_train_step(config, model, tx, schedule, mesh, shard)
  pid, n = jax.process_index(), jax.process_count()
  local = config.batch_size // n
  losses = []
  for i in range(3):
    full = random_batch(config, seed=i)
    mine = {k: v[pid * local:(pid + 1) * local] for k, v in full.items()}
    state, metrics = step(state, pipeline.to_global_arrays(mine, sharding.batch_sharding(mesh)))
    losses.append({k: float(v) for k, v in metrics.items()})
  if pid == 0:
    print("LOSSES " + json.dumps({"devices": jax.device_count(), "processes": n,
                                  "losses": losses}))


if __name__ == "__main__":
  main()
