"""Multi-host: 2 jax.distributed processes x 2 CPU devices == 1 process x 4 devices, through
train.py and eval.py (built-in data, and webdataset shards against their JSONL manifest)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cli(args, devices, pid=None, port=None):
  """Popen of `python args...` with `devices` CPU devices (as process pid of 2 when given)."""
  env = subprocess_env(devices)
  if pid is not None:
    env.update(MMJAX_COORDINATOR=f"127.0.0.1:{port}", MMJAX_NUM_PROCESSES="2",
               MMJAX_PROCESS_ID=str(pid))
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _both(args):
  """Run `args` as 2 processes x 2 devices; both must exit 0."""
  port = _free_port()
  procs = [_cli(args, 2, pid, port) for pid in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f)}


# over 60 s: six real processes (train.py on 1 and on 2 processes, eval.py on 2 and on 1), each
# compiling its own program; the process boundary and the coordinator are what is tested.
def test_train_py_and_eval_py_on_two_processes(tmp_path):
  """train.py on 2 processes (each reading its slice of every global batch through grain) gives
  the losses of 1 process x 4 devices; its checkpoint (written by both processes) evaluates on
  2 processes (scores all-gathered across them) to the results of 1 process."""
  train = ["train.py", "--config=tests/tiny_config.py", "--config.mesh.data=2",
           "--config.mesh.fsdp=2", "--config.total_steps=4"]
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  ref = _cli([*train, f"--workdir={single}"], 4)
  _, err = ref.communicate(timeout=600)
  assert ref.returncode == 0, err[-3000:]
  _both([*train, f"--workdir={multi}"])
  m, s = _metrics(multi), _metrics(single)
  assert sorted(m) == sorted(s) == [1, 2, 3, 4]
  for step in s:
    for k in ("loss", "contrastive/loss", "itm/loss", "mlm/loss", "grad_norm"):
      np.testing.assert_allclose(m[step][k], s[step][k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert [d for d in os.listdir(os.path.join(multi, "checkpoints")) if d.isdigit()] == ["4"]

  _both(["eval.py", f"--workdir={multi}", f"--out={tmp_path}/eval2"])
  one = _cli(["eval.py", f"--workdir={multi}", f"--out={tmp_path}/eval1"], 1)
  _, err = one.communicate(timeout=600)
  assert one.returncode == 0, err[-3000:]
  r2 = json.load(open(tmp_path / "eval2" / "results.json"))
  r1 = json.load(open(tmp_path / "eval1" / "results.json"))
  assert r2["devices"] == 4 and r1["devices"] == 1 and r2["step"] == 4
  for k, v in r1.items():
    if k == "devices":
      continue
    if isinstance(v, float):
      assert abs(r2[k] - v) < 1e-5, (k, v, r2[k])
    else:
      assert r2[k] == v, k
  assert "zero_shot/accuracy" in r1 and "itm/pairwise_accuracy" in r1


def test_train_py_from_shards_on_two_processes_equals_the_manifest_on_one(tmp_path):
  """webdataset shards written from a JSONL manifest, read by 2 processes (each its rows of
  every global batch, data.shard_assign='examples'): the losses of training from the JSONL on
  1 process x 4 devices, step by step."""
  from mmjax.data import write  # pylint: disable=import-outside-toplevel
  from tests.test_data_shards import _manifest  # pylint: disable=import-outside-toplevel
  manifest = _manifest(str(tmp_path / "data"), n=40)
  res = write.write("jsonl", manifest, "wds", str(tmp_path / "wds"), shard_size=7)
  train = ["train.py", "--config=tests/tiny_config.py", "--config.mesh.data=2",
           "--config.mesh.fsdp=2", "--config.total_steps=3"]
  ref = _cli([*train, f"--workdir={tmp_path / 'jsonl'}", "--config.data.source=jsonl",
              f"--config.data.jsonl_path={manifest}"], 4)
  _, err = ref.communicate(timeout=600)
  assert ref.returncode == 0, err[-3000:]
  _both([*train, f"--workdir={tmp_path / 'wds'}_run", "--config.data.source=wds",
         f"--config.data.wds_shards={res['pattern']}"])
  m, s = _metrics(f"{tmp_path / 'wds'}_run"), _metrics(str(tmp_path / "jsonl"))
  assert sorted(m) == sorted(s) == [1, 2, 3]
  for step in s:
    for k in ("loss", "contrastive/loss", "itm/loss", "mlm/loss", "grad_norm"):
      np.testing.assert_allclose(m[step][k], s[step][k], rtol=1e-5, atol=1e-6, err_msg=k)
