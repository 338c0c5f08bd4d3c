"""train.py / eval.py behaviour: exact resume, kill -9 safety, restore onto another mesh, and
one-line errors for every bad input the issue names."""
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from mmjax import checkpoint, config_lib, configure, evaluate, trainer
from tests import tiny_config as tiny
from tests.helpers import apply_overrides, run_entry, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**kw):
  c = tiny.get_config()
  c.mesh.data = 1  # one device in-process (the suite runs with 8 simulated devices)
  return apply_overrides(c, kw)


def _one_device(fn):
  """Run fn with trainer/evaluate on the first device only (the suite has 8 simulated)."""
  import functools
  orig_train, orig_run = trainer.train, evaluate.run
  trainer.train = functools.partial(orig_train, devices=jax.devices()[:1])
  evaluate.run = functools.partial(orig_run, devices=jax.devices()[:1])
  try:
    return fn()
  finally:
    trainer.train, evaluate.run = orig_train, orig_run


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r}


def _evals(workdir):
  """[(step, {eval/... : value})] of the periodic evaluations (eval.every_steps)."""
  return [(r["step"], {k: v for k, v in r.items() if k != "step"})
          for r in _records(workdir) if "eval/retrieval/examples" in r]


def test_exact_resume(tmp_path):
  """... and the eval.every_steps schedule continues across the stop: every evaluation point
  once, with the values of the uninterrupted run."""
  cfg = _cfg(total_steps=6, **{"checkpoint.every_steps": 100, "eval.every_steps": 2,
                               "eval.evaluators": ("retrieval",), "eval.num_examples": 16,
                               "eval.batch_size": 8})
  full = _one_device(lambda: trainer.train(cfg, str(tmp_path / "a"), log_to_stdout=False))
  _one_device(lambda: trainer.train(cfg, str(tmp_path / "b"), stop_after=3,
                                    log_to_stdout=False))
  assert checkpoint.Checkpointer(str(tmp_path / "b" / "checkpoints")).latest_step() == 3
  resumed = _one_device(lambda: trainer.train(cfg, str(tmp_path / "b"), log_to_stdout=False))
  assert resumed["step"] == 6
  chex.assert_trees_all_equal(jax.device_get(resumed["state"].params),
                              jax.device_get(full["state"].params))
  la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
  assert sorted(la) == sorted(lb) == list(range(1, 7))
  assert all(la[s] == lb[s] for s in la), (la, lb)
  ea, eb = _evals(tmp_path / "a"), _evals(tmp_path / "b")
  assert [s for s, _ in ea] == [s for s, _ in eb] == [2, 4, 6]  # stop at 3: 2 before, 4 after
  assert ea == eb


def _train_cmd(workdir, *extra):
  return [sys.executable, "train.py", "--config=tests/tiny_config.py", f"--workdir={workdir}",
          "--config.mesh.data=-1", *extra]


def _env(devices=1):
  return subprocess_env(devices)


def _committed(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


# ~35 s: three real train.py processes, two of them killed with SIGKILL at a random moment
# after a new commit (the second after taking the first's stale lock); the process dying
# mid-save is what is tested.
def test_kill_minus_9_always_resumes_from_the_latest_commit(tmp_path):
  workdir = str(tmp_path / "run")
  cmd = _train_cmd(workdir, "--config.total_steps=400", "--config.checkpoint.every_steps=3",
                   "--config.checkpoint.keep=2")
  rng = random.Random(0)
  for trial in range(2):
    before = _committed(workdir)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # Wait until it trains (a committed step beyond the last), then kill at a random moment.
    deadline = time.time() + 120
    while not _committed(workdir) or _committed(workdir)[-1] <= (before or [0])[-1]:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"trial {trial}: no new checkpoint within 120 s "
                    f"(exit {proc.poll()}):\n{proc.communicate()[0][-2000:]}")
      time.sleep(0.2)
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out[-2000:])
    if before:  # it resumed from the commit the previous kill left, taking the dead's lock
      assert f"resumed     from checkpoint step {before[-1]}" in out, out[-2000:]
      assert "took over the stale lock of a run that is gone" in out, out[-2000:]
    else:  # the first run started fresh
      assert "resumed" not in out and "mesh " in out, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
  # A final clean run finishes from the last commit.
  last = _committed(workdir)[-1]
  out = subprocess.run(cmd[:-3] + [f"--config.total_steps={last + 2}",
                                   "--config.checkpoint.every_steps=3"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed     from checkpoint step {last}" in out.stdout
  assert f"done: step {last + 2}/{last + 2}" in out.stdout


def test_a_second_writer_is_refused_and_the_first_is_unaffected(tmp_path):
  workdir = str(tmp_path / "run")
  first = subprocess.Popen(_train_cmd(workdir, "--config.total_steps=150",
                                      "--config.checkpoint.every_steps=50"),
                           cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  lock = os.path.join(workdir, "train.lock")
  deadline = time.time() + 120
  while not (os.path.exists(lock) and f'"pid": {first.pid}' in open(lock).read()):
    assert time.time() < deadline and first.poll() is None, first.communicate()
    time.sleep(0.2)
  second = subprocess.run(_train_cmd(workdir, "--config.total_steps=150"), cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
  assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
  line = second.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: workdir {workdir} is being trained by another run") and \
      f"pid {first.pid}" in line, line
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0 and "Traceback" not in err, err[-3000:]
  assert "done: step 150/150" in out
  assert _committed(workdir)[-1] == 150
  steps = [json.loads(x)["step"] for x in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(steps) == len(set(steps)), steps  # one writer: no step logged twice
  assert open(lock).read() == ""  # released: no holder


def test_eval_py_reads_committed_steps_while_training_saves(tmp_path):
  """Readers take no lock: eval.py in a loop on a workdir that a live run saves into (every 2
  steps, keeping 2, so steps vanish under the reader) succeeds each time on a committed step."""
  workdir = str(tmp_path / "run")
  train = subprocess.Popen(_train_cmd(workdir, "--config.total_steps=100000",
                                      "--config.checkpoint.every_steps=2",
                                      "--config.checkpoint.keep=2"),
                           cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not _committed(workdir):
      assert time.time() < deadline and train.poll() is None, train.communicate()[1][-3000:]
      time.sleep(0.2)
    seen = []
    for i in range(3):
      r = run_entry(["eval.py", f"--workdir={workdir}", f"--out={tmp_path}/{i}",
                     "--evaluators=retrieval", "--config.eval.num_examples=32"])
      assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
      step = json.load(open(tmp_path / str(i) / "results.json"))["step"]
      assert step > 0 and step % 2 == 0, step
      seen.append(step)
    assert train.poll() is None, "training ended early"
    assert seen == sorted(seen) and seen[-1] > seen[0], seen  # it read the run's progress
  finally:
    train.send_signal(signal.SIGTERM)
    err = train.communicate(timeout=120)[1]
  assert train.returncode == 0, err[-3000:]


def _final_loss(workdir):
  rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if "loss" in r][-1]


def test_sigterm_during_an_async_save_exits_0_and_resumes_exactly(tmp_path):
  """Every step saves asynchronously, so SIGTERM lands while a save is in flight."""
  workdir = str(tmp_path / "run")
  cmd = _train_cmd(workdir, "--config.total_steps=30", "--config.checkpoint.every_steps=1")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 120
  while time.time() < deadline:
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")) and \
        len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0 and "Traceback" not in out, out[-2000:]
  steps = _committed(workdir)
  assert steps and 3 <= steps[-1] < 30, steps
  assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in n]
  rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resumed     from checkpoint step {steps[-1]}" in rerun.stdout
  whole = str(tmp_path / "whole")
  ref = subprocess.run(_train_cmd(whole, "--config.total_steps=30"), cwd=ROOT, env=_env(),
                       capture_output=True, text=True)
  assert ref.returncode == 0, ref.stderr[-3000:]
  got, want = _final_loss(workdir), _final_loss(whole)
  assert got["step"] == want["step"] == 30 and got["loss"] == want["loss"], (got, want)


def _tree_hashes(path):
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


# over 60 s: six train.py runs (the faulted pair, a metrics fault, the rerun, and the same history
# without the faults to compare the final loss with); writes failing inside a real process is
# the point.
def test_a_failed_save_is_one_line_and_loses_nothing(tmp_path):
  """The disk filling up mid-save, reproduced by a file size limit the save's files cross."""
  workdir = str(tmp_path / "run")
  cmd = _train_cmd(workdir, "--config.total_steps=12", "--config.checkpoint.every_steps=3")
  first = subprocess.run(cmd[:-2] + ["--config.total_steps=6", cmd[-1]], cwd=ROOT, env=_env(),
                         capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  before = {s: _tree_hashes(os.path.join(workdir, "checkpoints", str(s)))
            for s in _committed(workdir)}
  assert sorted(before) == [3, 6]
  limit = 120 * 1024  # above metrics.jsonl, below a checkpoint's largest file
  # (no compilation cache: its writes would cross the limit too, and a cut-short entry would
  # outlive the test)
  env = {k: v for k, v in _env().items() if not k.startswith("JAX_COMPILATION_CACHE")}
  full = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                              (limit, limit)))
  assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
  errors = [x for x in full.stderr.splitlines() if "error" in x.lower()]
  assert len(errors) == 1, full.stderr[-3000:]
  assert errors[0].startswith("error: saving checkpoint step 9 failed: File too large (") and \
      "the last committed checkpoint, step 6, is intact" in errors[0], errors[0]
  assert {s: _tree_hashes(os.path.join(workdir, "checkpoints", str(s))) for s in before} == before
  # A TensorBoard write crossing the limit, no save due: one line naming the event file, not
  # a writer thread dying and the run blocked on its queue forever (the timeout). Each run
  # starts an event file, which grows faster than metrics.jsonl; that one is set aside so
  # it too starts empty and the event file crosses first.
  metrics = os.path.join(workdir, "metrics.jsonl")
  os.rename(metrics, metrics + ".kept")
  limit = 12_000
  tb = subprocess.run(cmd[:-2] + ["--config.total_steps=26", "--config.checkpoint.every_steps="
                                  "1000"], cwd=ROOT, env=env, capture_output=True,
                      text=True, timeout=240,
                      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                            (limit, limit)))
  assert tb.returncode == 1 and "Traceback" not in tb.stderr, tb.stderr[-3000:]
  errors = [x for x in tb.stderr.splitlines() if "error" in x.lower()]
  assert len(errors) == 1 and errors[0].startswith(
      f"error: writing metrics to {workdir}/tensorboard/events.out.tfevents.") and \
      "failed: File too large; the committed checkpoints are intact" in errors[0], errors
  os.replace(metrics + ".kept", metrics)
  assert {s: _tree_hashes(os.path.join(workdir, "checkpoints", str(s))) for s in before} == before
  rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resumed     from checkpoint step 6" in rerun.stdout
  # The same two runs (6 steps, then resumed to 12) without the fault end on the same loss.
  whole = str(tmp_path / "whole")
  for args in (first.args, cmd):
    ref = subprocess.run([a.replace(workdir, whole) for a in args], cwd=ROOT, env=_env(),
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
  got, want = _final_loss(workdir), _final_loss(whole)
  assert got["step"] == want["step"] == 12 and got["loss"] == want["loss"], (got, want)


def test_restore_onto_other_meshes_gives_identical_metrics(tmp_path):
  workdir = str(tmp_path / "run")
  out = subprocess.run(_train_cmd(workdir, "--config.mesh.data=2", "--config.mesh.fsdp=2",
                                  "--config.total_steps=12"),
                       cwd=ROOT, env=_env(4), capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "'data': 2, 'fsdp': 2" in out.stdout
  results = {}
  for n in (1, 8):
    r = subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}", f"--out={tmp_path}/{n}"],
                       cwd=ROOT, env=_env(n), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    results[n] = json.load(open(tmp_path / str(n) / "results.json"))
  assert results[1]["devices"] == 1 and results[8]["devices"] == 8
  for k, v in results[1].items():
    if k == "devices":
      continue
    if isinstance(v, float):
      assert abs(results[8][k] - v) < 1e-5, (k, v, results[8][k])
    else:
      assert results[8][k] == v, k
  assert "zero_shot/accuracy" in results[1] and "itm/group_accuracy" in results[1]


def test_config_errors():
  with pytest.raises(config_lib.ConfigError, match="early_sum needs aligned tokens") as e:
    configure.validate(_cfg(**{"model.fusion": "early_sum", "loss_weights.contrastive": 0.0}))
  assert "early_sum_align='pad'" in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="'itm' is not available with fusion "
                     "'dual_encoder'"):
    configure.validate(_cfg(**{"model.fusion": "dual_encoder"}))
  with pytest.raises(config_lib.ConfigError, match="not divisible by the 8 batch shards"):
    configure.validate(_cfg(**{"batch_size": 12, "mesh.data": -1}), num_devices=8)
  for e in (config_lib.ConfigError,):
    assert issubclass(e, ValueError)


def test_corrupt_checkpoint_is_named(tmp_path):
  cfg = _cfg(total_steps=4, **{"checkpoint.every_steps": 2})
  _one_device(lambda: trainer.train(cfg, str(tmp_path), log_to_stdout=False))
  ckdir = tmp_path / "checkpoints" / "4" / "state"
  for root, _, files in os.walk(ckdir):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  with pytest.raises(checkpoint.CheckpointError) as e:
    _one_device(lambda: evaluate.run(str(tmp_path)))
  msg = str(e.value)
  assert "\n" not in msg and "corrupt or incomplete" in msg and "fall back to step 2" in msg
  with pytest.raises(checkpoint.CheckpointError, match="corrupt or incomplete"):
    _one_device(lambda: trainer.train(cfg, str(tmp_path), log_to_stdout=False))


def _poison(step_to_poison):
  """Wrap trainer.model_inputs so one step's image batch holds a NaN."""
  orig = trainer.model_inputs
  calls = {"n": 0}

  def poisoned(batch, model):
    out = orig(batch, model)
    calls["n"] += 1
    if calls["n"] == step_to_poison:
      out = dict(out)
      out["image"] = out["image"].copy()
      out["image"][0, 0, 0, 0] = np.nan
    return out
  return poisoned


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_loss(tmp_path, policy, monkeypatch):
  monkeypatch.setattr(trainer, "model_inputs", _poison(3))
  cfg = _cfg(total_steps=5, nan_policy=policy, **{"checkpoint.every_steps": 2})
  if policy == "stop":
    with pytest.raises(trainer.TrainingError) as e:
      _one_device(lambda: trainer.train(cfg, str(tmp_path), log_to_stdout=False))
    msg = str(e.value)
    assert "\n" not in msg and "non-finite loss at step 3" in msg
    assert "Last good checkpoint: step 2" in msg
  else:
    out = _one_device(lambda: trainer.train(cfg, str(tmp_path), log_to_stdout=False))
    assert out["step"] == 5 and out["metrics"]["skipped_total"] == 1.0
    assert np.isfinite(out["metrics"]["loss"])


def test_metric_writer_tensorboard_events_hold_what_metrics_jsonl_holds(tmp_path):
  """The synchronous event file is a valid TFRecord stream of scalar summaries, one per
  metric per written step, equal to the metrics.jsonl rows."""
  import struct  # pylint: disable=import-outside-toplevel
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  from mmjax.trainer import MetricWriter  # pylint: disable=import-outside-toplevel
  w = MetricWriter(str(tmp_path))
  for step in (1, 2, 5):
    w.write(step, {"loss": 1.0 / step, "grad_norm": float(step)})
  w.close()
  (events,) = (tmp_path / "tensorboard").iterdir()
  raw, i, got = events.read_bytes(), 0, []
  while i < len(raw):
    (n,) = struct.unpack("<Q", raw[i:i + 8])
    e = event_pb2.Event()
    e.ParseFromString(raw[i + 12:i + 12 + n])
    i += 12 + n + 4  # length, its crc, the record, its crc
    got += [(e.step, v.tag, v.simple_value) for v in e.summary.value]
  rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  want = [(r["step"], k, v) for r in rows for k, v in r.items() if k != "step"]
  assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want]
  np.testing.assert_allclose([v for *_, v in got], [v for *_, v in want], rtol=1e-6)
