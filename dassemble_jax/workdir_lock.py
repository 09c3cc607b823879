"""One run per workdir: a second run on a workdir in use stops with one line, before it writes.

Two runs writing one workdir would interleave checkpoints and metrics (Orbax crashes one of them
mid-save). Process 0 of a run holds an advisory lock (flock) on WORKDIR/.lock for the run's life;
the lock goes with the process, so a killed run never leaves a stale lock behind, and the file
names the holder for the message. A run that fails before writing anything leaves no workdir.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

LOCK_FILE = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str, *, enabled: bool = True) -> Iterator[None]:
  """Holds `workdir`'s lock for the block (creating the folder); `enabled=False` (processes other
  than 0 of a multi-process run) does nothing."""
  if not enabled:
    yield
    return
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise WorkdirBusyError(f"{workdir}: in use by another run ({holder}); wait for it to "
                             "finish or choose another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    try:
      yield
    finally:
      if created and os.listdir(workdir) == [LOCK_FILE]:
        os.remove(path)
        os.rmdir(workdir)
      fcntl.flock(f, fcntl.LOCK_UN)
