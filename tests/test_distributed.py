"""Multi-host: 2 jax.distributed processes x 2 CPU devices == 1 process x 4 devices."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(out):
  line = [l for l in out.splitlines() if l.startswith("LOSSES ")][-1]
  return json.loads(line[len("LOSSES "):])


def test_two_processes_equal_one_process():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  worker = os.path.join(ROOT, "tests", "distributed_worker.py")
  ref = subprocess.run([sys.executable, worker, "4"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-3000:]
  port = _free_port()
  procs = []
  for pid in range(2):
    penv = dict(env, MMJAX_COORDINATOR=f"127.0.0.1:{port}", MMJAX_NUM_PROCESSES="2",
                MMJAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, worker, "2"], cwd=ROOT, env=penv,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  multi, single = _losses(outs[0][0]), _losses(ref.stdout)
  assert multi["processes"] == 2 and multi["devices"] == 4 and single["devices"] == 4
  for a, b in zip(multi["losses"], single["losses"]):
    for k in ("loss", "contrastive/loss", "itm/loss", "mlm/loss", "mim/loss", "grad_norm"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
