"""Process liveness (pid reuse guarded by create time), stopping a process group, and stopping
exactly the processes recorded under a folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from phase2.infra.processes import (
    ProcessRecord,
    has_exited,
    process_alive,
    process_created_at,
    record_path,
    stop_process_group,
    stop_recorded,
    write_record,
)
from phase2.infra.settings import PROJECT_ROOT

# Ignores SIGTERM, so only the SIGKILL after the grace period stops it.
_STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def test_process_alive_checks_identity_and_zombies():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        started = process_created_at(sleeper.pid)
        assert started is not None
        assert process_alive(sleeper.pid) and process_alive(sleeper.pid, started)
        assert not process_alive(sleeper.pid, started - 60)  # same pid, another process
        sleeper.kill()
        time.sleep(0.5)
        assert not process_alive(sleeper.pid)  # zombie: dead, not yet reaped
        assert has_exited(sleeper.pid)  # and reaped by it
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not process_alive(sleeper.pid) and process_created_at(sleeper.pid) is None


def test_stop_process_group_escalates_to_sigkill():
    child = subprocess.Popen([sys.executable, "-c", _STUBBORN], stdout=subprocess.PIPE, start_new_session=True)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert stop_process_group(child.pid, grace=0.5, gone=lambda _: child.poll() is not None)
    assert time.monotonic() - started >= 0.5 and child.returncode == -signal.SIGKILL


# --- records: stop what this run started, and nothing else --------------------------------------

# A group leader with a child in its group, like `prefect server start` and its uvicorn.
_LEADER_WITH_CHILD = (
    "import subprocess, time; subprocess.Popen(['sleep', '60']); print('ready', flush=True); time.sleep(60)"
)


def _group(command: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", command], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def _members(pgid: int) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except ProcessLookupError:
            continue
    return found


def test_stop_recorded_stops_recorded_groups_and_spares_everything_else(tmp_path):
    """Two identical process groups (same command line, as two users' stacks would have): only the
    one recorded under our folder is stopped, child included. A record whose pid now belongs to
    another process (pid reuse: create time differs) stops nothing."""
    ours, theirs = _group(_LEADER_WITH_CHILD), _group(_LEADER_WITH_CHILD)
    try:
        ours_members, theirs_members = _members(ours.pid), _members(theirs.pid)
        assert len(ours_members) == 2 and len(theirs_members) == 2
        state = tmp_path / "state"
        write_record(record_path(state / "prefect", "server"), ours.pid, ["prefect", "server", "start"])
        # A stale record: its pid is theirs now, started at another time.
        stale = record_path(state / "old", "worker")
        stale.parent.mkdir()
        stale.write_text(ProcessRecord(pid=theirs.pid, created_at=time.time() - 3600, command=["x"]).model_dump_json())
        # Their own record, in their state dir (not ours to walk).
        write_record(record_path(tmp_path / "other-user", "server"), theirs.pid, ["prefect", "server", "start"])

        stopped = stop_recorded([state], grace=5)

        assert [(record.pid, ok) for _, record, ok in stopped] == [(ours.pid, True)]
        assert ours.poll() is not None and _members(ours.pid) == []
        assert theirs.poll() is None and sorted(_members(theirs.pid)) == sorted(theirs_members)
        assert not record_path(state / "prefect", "server").exists() and stale.exists()
        assert stop_recorded([state]) == []  # nothing of ours left: idempotent
    finally:
        for proc in (ours, theirs):
            stop_process_group(proc.pid, grace=1, gone=lambda _, p=proc: p.poll() is not None)


def test_stop_recorded_finds_group_members_that_outlived_their_leader(tmp_path):
    """The recorded leader has exited, its child runs on in the group: still ours, still stopped."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo ready"], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None and leader.stdout.readline() == b"ready\n"
    write_record(record_path(tmp_path, "leader"), leader.pid, ["sh"])
    leader.wait(timeout=10)
    orphans = _members(leader.pid)
    assert len(orphans) == 1 and orphans[0] != leader.pid
    try:
        stopped = stop_recorded([tmp_path], grace=5)
        assert [ok for _, _, ok in stopped] == [True]
        assert _members(leader.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)


def test_stop_recorded_command_lists_ours_and_fails(tmp_path):
    """`python -m phase2.infra.processes --stop-recorded DIR` (what .ci/run calls): exit 1 with the
    leftover listed when something recorded still ran, exit 0 when nothing did."""
    ours = _group(_LEADER_WITH_CHILD)
    command = [sys.executable, "-m", "phase2.infra.processes", "--stop-recorded", str(tmp_path), "--grace", "5"]
    try:
        write_record(record_path(tmp_path / "seaweedfs", "instance"), ours.pid, ["weed", "mini"])
        first = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert first.returncode == 1, first.stdout + first.stderr
        assert f"pid {ours.pid} weed mini" in first.stdout and "stopped" in first.stdout
        assert ours.poll() is not None
        again = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert (again.returncode, again.stdout) == (0, "")
    finally:
        stop_process_group(ours.pid, grace=1, gone=lambda _: ours.poll() is not None)


def test_ci_script_kills_nothing_by_name():
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "pkill" not in script and "killall" not in script and "pgrep" not in script
    assert "phase2.infra.processes --stop-recorded" in script
