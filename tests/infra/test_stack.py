"""`phase2 up` / `down`: the local stack starts, is reused, and stops without leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from phase2.infra.prefect_stack import LocalStack, PrefectWorker, ProcessRecord, free_port
from phase2.infra.processes import process_alive, process_created_at
from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts


def _pids(stack: LocalStack) -> dict[str, int | None]:
    records = {"server": stack.server.record(), "worker": stack.worker.record(), "s3": stack.s3.running_instance()}
    return {name: record.pid if record else None for name, record in records.items()}


def test_up_and_down_are_idempotent(tmp_path):
    state = tmp_path / "state"
    stack = LocalStack(
        state,
        prefect_port=free_port(),
        ui=False,
        pool="idempotence",
        seaweedfs=SeaweedFS(state, ports=SeaweedPorts.free()),
    )
    try:
        stack.up(deploy=False)
        first = _pids(stack)
        assert all(first.values()), first
        assert stack.server.healthy()
        stack.up(deploy=False)  # a second `up` reuses what runs
        assert _pids(stack) == first
        status = stack.status()
        assert status["prefect_server"]["running"] and status["s3"]["running"] and status["worker"]["running"]
        # Everything lives under the state dir.
        assert (state / "prefect" / "server.log").exists() and (state / "seaweedfs" / "weed.log").exists()
    finally:
        stack.down()
        stack.down()  # idempotent
    assert not any(_pids(stack).values())
    assert not any(process_alive(pid) for pid in first.values() if pid)


def test_cli_help_lists_every_command():
    out = subprocess.run(
        [str(Path(sys.executable).with_name("phase2")), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for command in ("validate", "rebalance", "history", "lint", "models", "up", "down", "status", "deploy", "run"):
        assert command in out


def test_a_record_whose_pid_was_reused_is_not_running(tmp_path):
    """The record names a live pid, but one started at another time: not the process we started."""
    worker = PrefectWorker(tmp_path, pool="reuse")
    started = process_created_at(os.getpid())
    assert started is not None
    for created_at, ours in ((started - 100, False), (started, True)):
        worker.record_file.write_text(
            ProcessRecord(pid=os.getpid(), created_at=created_at, command=["x"]).model_dump_json()
        )
        assert worker.is_running() is ours
