"""One writer per workdir: the lock train.py holds on its workdir while it runs.

The lock is `<workdir>/train.lock`, a JSON line {host, pid, started} held with an exclusive
`flock` for the writer's lifetime and touched every HEARTBEAT_S seconds. A second writer is
refused in one line naming the holder. A lock whose holder died (kill -9, a lost host) is
stale and is taken over:
  * on the holder's host (or any filesystem that shares flock between hosts) the kernel
    released the flock when the process died, so the file is no longer locked;
  * a holder on another host is alive only while its heartbeat is fresh (touched within
    STALE_S seconds): filesystems that do not share flock across hosts still see the mtime.
Readers (eval.py, mmjax.load, generate.py) never take the lock. Only process 0 of a
multi-host run takes it (the workdir is on storage every process shares).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
from typing import Optional

NAME = "train.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0


class WorkdirLocked(RuntimeError):
  """Another live writer holds the workdir (one-line message naming it and the fix)."""


def _holder(text: str) -> dict:
  try:
    info = json.loads(text)
    return info if isinstance(info, dict) else {}
  except ValueError:
    return {}


def _describe(info: dict) -> str:
  return (f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started "
          f"{info.get('started', '?')}")


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the lock (module docstring); `taken_over` is the
  holder a stale lock named ({} when there was none)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, NAME)
    self.taken_over: dict = {}
    self._fd: Optional[int] = None
    self._stop = threading.Event()
    self._beat: Optional[threading.Thread] = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      info = _holder(_read(fd))
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirLocked(self._refusal(info)) from None
    info = _holder(_read(fd))
    here = socket.gethostname()
    if info and info.get("host") != here:
      age = time.time() - os.fstat(fd).st_mtime
      if age < STALE_S:  # a writer on another host whose filesystem does not share flock
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise WorkdirLocked(self._refusal(info, f"; its last heartbeat was {age:.0f} s ago (a "
                                                f"lock older than {STALE_S:.0f} s is stale)"))
    self.taken_over = info
    me = {"host": here, "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    self._beat = threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True)
    self._beat.start()
    return self

  def _refusal(self, info: dict, extra: str = "") -> str:
    return (f"workdir {os.path.dirname(self.path)} is being trained by another run "
            f"({_describe(info)}){extra}; wait for it to finish or stop it, or pass another "
            "--workdir (evaluating it with eval.py needs no lock)")

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:  # the workdir vanished: the run itself reports its next write
        pass

  def release(self) -> None:
    if self._fd is None:
      return
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
    try:
      os.ftruncate(self._fd, 0)  # an empty lock file: no holder
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read(fd: int) -> str:
  try:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
  except OSError:
    return ""
