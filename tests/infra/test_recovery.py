"""Worker death: telling a live flow-run process from a dead, zombie or reused pid.

The whole scenario (a worker and its flow-run process killed mid-training leave the run Running,
holding the concurrency slot; `recover` marks it Crashed and the re-run resumes training) runs in
tests/pipeline/test_two_machines.py, with the re-run on a second worker host."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import psutil

from phase2.infra.recovery import flow_run_process_alive
from tests.plugins.flow_runs import wait_until


def test_flow_run_process_alive_tells_live_dead_zombie_and_reused_pids():
    run_id = str(uuid.uuid4())
    sleeper = subprocess.Popen(["sleep", "30"], env={**os.environ, "PREFECT__FLOW_RUN_ID": run_id})
    try:
        # Until exec, the child still holds the parent's environment (no flow run id): wait for it.
        wait_until(lambda: psutil.Process(sleeper.pid).cmdline() == ["sleep", "30"] or None, 10, "sleep exec'd")
        assert flow_run_process_alive(sleeper.pid) and flow_run_process_alive(sleeper.pid, run_id)
        assert not flow_run_process_alive(sleeper.pid, uuid.uuid4())  # the pid now belongs to another run
        sleeper.kill()
        time.sleep(0.5)
        assert not flow_run_process_alive(sleeper.pid)  # zombie: dead, not yet reaped
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not flow_run_process_alive(sleeper.pid)
