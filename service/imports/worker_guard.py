"""Decode workers (spawned processes) exit when the server that started them dies.

A SIGKILL'd or crashed server cannot shut its process pool down: without this, its workers (and
the multiprocessing resource tracker, which lives as long as they hold its pipe) stay behind.
Two guards, run by the pool's initializer in each worker: Linux's parent-death signal
(prctl PR_SET_PDEATHSIG, through ctypes), and, everywhere, a thread that watches the parent pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 1.0


def guard_worker(parent_pid: int) -> None:
    """ProcessPoolExecutor initializer: tie this worker's life to parent_pid's."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while True:
        time.sleep(WATCH_INTERVAL)
        if os.getppid() != parent_pid:
            os._exit(1)  # no cleanup to do: the chunk being decoded belongs to a dead import
