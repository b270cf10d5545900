"""`phase2 up` / `down`: the local stack starts, is reused, and stops without leftovers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from phase2.infra.prefect_stack import LocalStack, free_port
from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts


def _pids(stack: LocalStack) -> dict[str, int | None]:
    return {
        "server": (stack.server.record() or {}).get("pid"),
        "worker": (stack.worker.record() or {}).get("pid"),
        "s3": stack.s3._read_instance().pid if stack.s3.is_running() else None,
    }


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
    for pid in first.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


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
