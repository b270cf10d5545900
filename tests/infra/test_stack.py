"""`phase2 up` / `down` / `run`: the local stack starts, is reused, and stops without leftovers;
`run` stops only what it started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phase2.infra.prefect_stack import LocalStack, PrefectWorker, free_port
from phase2.infra.processes import ProcessRecord, find_records, process_alive, process_created_at
from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts


def _pids(stack: LocalStack) -> dict[str, int | None]:
    records = {"server": stack.server.record(), "worker": stack.worker.record(), "s3": stack.s3.running_instance()}
    return {name: record.pid if record else None for name, record in records.items()}


def test_up_and_down_are_idempotent_and_every_service_is_recorded(tmp_path):
    """Also what .ci/run's clean-up walks: one record per service, each naming a live process
    started at the recorded time (one stack start serves both checks)."""
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
        records = {path.name: record for path, record in find_records([tmp_path])}
        assert set(records) == {"instance.pid.json", "server.pid.json", "worker.pid.json"}
        assert all(process_alive(r.pid, r.created_at) and r.created_at for r in records.values())
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


def _stack(state: Path) -> LocalStack:
    return LocalStack(state, prefect_port=free_port(), ui=False, seaweedfs=SeaweedFS(state, ports=SeaweedPorts.free()))


def test_stop_started_leaves_a_stack_it_did_not_start(tmp_path):
    state = tmp_path / "state"
    theirs = _stack(state)
    try:
        theirs.up(deploy=False)
        before = _pids(theirs)
        ours = LocalStack(state, ui=False)  # e.g. `phase2 run` while `phase2 up` is running
        ours.up(deploy=False)
        assert _pids(ours) == before  # reused, not started again
        assert ours.stop_started() == []
        assert _pids(theirs) == before and all(process_alive(pid) for pid in before.values() if pid)
    finally:
        assert theirs.stop_started() == ["worker", "prefect server", "SeaweedFS"]
    assert not any(_pids(theirs).values())


@pytest.mark.timeout(600)
def test_phase2_run_leaves_a_running_stack_running(tmp_path, monkeypatch):
    """The real `phase2 run` against a stack someone brought up before: it deploys and triggers on
    that stack, and when it ends the stack is still up, the very same processes."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "PHASE2_", "WANDB_"))}
    for key in set(os.environ) - set(env):  # the stack below must use this state dir's credentials
        monkeypatch.delenv(key)
    stack = _stack(state)
    try:
        stack.up(deploy=False)
        before = _pids(stack)
        started = time.monotonic()
        run = subprocess.run(
            [str(Path(sys.executable).with_name("phase2")), "run", "--data", str(tmp_path / "none" / "data.yaml")]
            + ["--baseline", "yolo11n.yaml", "--timeout", "1"],
            env={**env, "PHASE2_STATE_DIR": str(state)},
            capture_output=True,
            text=True,
            timeout=500,
        )
        output = run.stdout + run.stderr
        assert "deployment run phase2/train" in output, output[-3000:]  # it did deploy and trigger
        assert _pids(stack) == before, output[-3000:]
        assert all(process_alive(pid) for pid in before.values() if pid)
        print(f"phase2 run took {time.monotonic() - started:.0f} s")
    finally:
        stack.down()
