"""The workdir lock (mmjax.workdir_lock): a live holder refuses a second writer, on this host
through flock and on another host through a fresh heartbeat; a stale lock is taken over; a
released lock names no holder. (train.py through it: tests/test_train_loop.py.)"""
import json
import os
import time

import pytest

from mmjax import workdir_lock
from mmjax.workdir_lock import WorkdirLock, WorkdirLocked


def _write_holder(path, host, age_s):
  with open(path, "w") as f:
    f.write(json.dumps({"host": host, "pid": 4242, "started": "2026-01-01T00:00:00"}) + "\n")
  t = time.time() - age_s
  os.utime(path, (t, t))


def test_a_live_holder_on_this_host_refuses_a_second_writer(tmp_path):
  with WorkdirLock(str(tmp_path)) as held:
    assert held.taken_over == {}
    info = json.loads(open(tmp_path / workdir_lock.NAME).read())
    assert info["pid"] == os.getpid()
    with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}, started"):
      WorkdirLock(str(tmp_path)).acquire()
  assert open(tmp_path / workdir_lock.NAME).read() == ""
  with WorkdirLock(str(tmp_path)) as again:  # released: free to take, nothing to take over
    assert again.taken_over == {}


def test_another_hosts_lock_is_live_while_its_heartbeat_is_fresh(tmp_path):
  path = tmp_path / workdir_lock.NAME
  _write_holder(path, "other-host", age_s=5)
  with pytest.raises(WorkdirLocked, match="host other-host, pid 4242.*last heartbeat was 5 s"):
    WorkdirLock(str(tmp_path)).acquire()
  _write_holder(path, "other-host", age_s=workdir_lock.STALE_S + 1)
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.taken_over["host"] == "other-host" and lock.taken_over["pid"] == 4242
    assert json.loads(open(path).read())["pid"] == os.getpid()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
  import socket  # pylint: disable=import-outside-toplevel
  _write_holder(tmp_path / workdir_lock.NAME, socket.gethostname(), age_s=0)  # not flocked
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.taken_over["pid"] == 4242


def test_the_heartbeat_touches_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  path = tmp_path / workdir_lock.NAME
  with WorkdirLock(str(tmp_path)):
    t = time.time() - 100
    os.utime(path, (t, t))
    time.sleep(0.3)
    assert time.time() - os.stat(path).st_mtime < 5
