"""Processes this project starts: liveness (pid reuse guarded by create time) and stopping a
process group. psutil does the reading; only the group-stop sequence is ours."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import psutil


def process_created_at(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None when there is no such process."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def process_alive(pid: int, created_at: float | None = None) -> bool:
    """True for a live, non-zombie process; with ``created_at`` (as recorded when it was
    started), only if it is still that process and not a later one that reused the pid."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return created_at is None or abs(process.create_time() - created_at) < 1.0
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:  # another user's process: alive, identity unknown
        return created_at is None


def has_exited(pid: int) -> bool:
    """True once ``pid`` is gone; reaps it when it is our child (a zombie counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    return not process_alive(pid)


def stop_process_group(pid: int, grace: float, gone: Callable[[int], bool] = has_exited) -> bool:
    """SIGTERM the process group led by ``pid``, wait ``grace`` s, then SIGKILL. ``gone`` is the
    "has it exited" check (default: :func:`has_exited`). Returns False if it survived SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone(pid):
                return True
            time.sleep(0.1)
    return False
