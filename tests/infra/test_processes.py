"""Process liveness (pid reuse guarded by create time) and stopping a process group."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from phase2.infra.processes import has_exited, process_alive, process_created_at, stop_process_group

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
