"""Processes this project starts: liveness (pid reuse guarded by create time), stopping a
process group, and the records that let a later process find them again.

Every background process phase2 starts (SeaweedFS, the Prefect server and worker, the training
child, the tests' flow processes) is recorded in a ``*.pid.json`` file under the state dir it
works in: its pid, its create time and its command. :func:`stop_recorded` walks those records,
and only those, so cleaning up after a run (``.ci/run``) never touches another user's stack:
``python -m phase2.infra.processes --stop-recorded DIR...``. psutil does the reading; only the
stop sequence is ours.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil
from pydantic import BaseModel

from phase2.infra.files import atomic_write_text

RECORD_SUFFIX = ".pid.json"


class ProcessRecord(BaseModel):
    """What a ``*.pid.json`` file says about a background process phase2 started."""

    pid: int
    # Start time of that pid: a later process that reuses the pid is not ours.
    created_at: float | None = None
    command: list[str] = []


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
    return _terminate(lambda sig: os.killpg(pid, sig), lambda: gone(pid), grace)


def _terminate(send: Callable[[int], None], gone: Callable[[], bool], grace: float) -> bool:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone():
                return True
            time.sleep(0.1)
    return False


# --- records of the processes we started ------------------------------------------------------


def record_path(folder: Path, name: str) -> Path:
    """Where the record of the process ``name`` started for ``folder`` lives."""
    return folder / f"{name}{RECORD_SUFFIX}"


def write_record(path: Path, pid: int, command: Sequence[str]) -> ProcessRecord:
    """Record a process just started (call it right after Popen): pid, create time, command."""
    record = ProcessRecord(pid=pid, created_at=process_created_at(pid), command=list(command))
    atomic_write_text(path, record.model_dump_json())
    return record


def read_record(path: Path) -> ProcessRecord | None:
    """The record in ``path``; None when it is missing or unreadable."""
    try:
        return ProcessRecord.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def find_records(roots: Iterable[Path]) -> list[tuple[Path, ProcessRecord]]:
    """Every readable ``*.pid.json`` under ``roots`` (symlinked folders are not followed)."""
    found = []
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in sorted(files):
                if name.endswith(RECORD_SUFFIX):
                    path = Path(folder) / name
                    if (record := read_record(path)) is not None:
                        found.append((path, record))
    return found


def _group_members(pgid: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of process group ``pgid``."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def recorded_survivors(record: ProcessRecord) -> list[psutil.Process]:
    """The live processes a record stands for: the recorded process (identified by pid and create
    time: a pid reused by someone else's process is never ours) and, when it led a process group,
    the rest of that group, including members that outlived it. A record without a create time
    can't be told from pid reuse and stands for nothing."""
    if record.created_at is None:
        return []
    try:
        leader = psutil.Process(record.pid)
        same = abs(leader.create_time() - record.created_at) < 1.0
    except psutil.NoSuchProcess:
        # Gone. The kernel never hands out a pid that is still some group's id, so a group with this
        # id can only be the one the recorded process led: its members are ours.
        return _group_members(record.pid)
    except psutil.AccessDenied:
        return []
    if not same:
        return []  # the pid was reused (and so the group it led is empty)
    members = {p.pid: p for p in _group_members(record.pid)}
    with contextlib.suppress(psutil.Error):
        if leader.status() != psutil.STATUS_ZOMBIE:
            members.setdefault(leader.pid, leader)
    return list(members.values())


def stop_record(record: ProcessRecord, grace: float = 10.0) -> bool:
    """Stop what ``record`` stands for (its process group, or the process alone when it leads
    none): SIGTERM, ``grace`` s, SIGKILL. Returns False if something survived SIGKILL."""
    survivors = recorded_survivors(record)
    if not survivors:
        return True
    leads_no_group = any(p.pid == record.pid for p in survivors) and _pgid(record.pid) != record.pid

    def send(sig: int) -> None:
        if leads_no_group:
            os.kill(record.pid, sig)
        else:
            os.killpg(record.pid, sig)

    return _terminate(send, lambda: all(_exited(p) for p in survivors), grace)


def _exited(process: psutil.Process) -> bool:
    """True once that very process (pid and create time) is gone or a zombie; reaps our children."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def stop_recorded(roots: Iterable[Path], grace: float = 10.0) -> list[tuple[Path, ProcessRecord, bool]]:
    """Stop every process recorded under ``roots`` that still runs; nothing else is touched.
    Returns (record file, record, stopped) for each that was running; its record file is removed
    once it is stopped."""
    stopped = []
    for path, record in find_records(roots):
        if recorded_survivors(record):
            ok = stop_record(record, grace)
            if ok:
                path.unlink(missing_ok=True)
            stopped.append((path, record, ok))
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phase2.infra.processes", description=__doc__)
    parser.add_argument(
        "--stop-recorded",
        nargs="+",
        type=Path,
        required=True,
        metavar="DIR",
        help="stop the processes recorded (*.pid.json) under these folders; exit 1 if any was still running",
    )
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    left = stop_recorded(args.stop_recorded, args.grace)
    if not left:
        return 0
    print("processes left running (recorded under " + ", ".join(map(str, args.stop_recorded)) + "):")
    for path, record, ok in left:
        print(f"  pid {record.pid} {' '.join(record.command)} [{path}]: {'stopped' if ok else 'SURVIVED SIGKILL'}")
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
