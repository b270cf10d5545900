"""Worker death: a worker and its flow-run process killed mid-training leave the run Running
(holding the concurrency slot); `recover` marks it Crashed and the next run with the same
inputs resumes training from the last checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid

import psutil
import pytest
import yaml

from phase2.infra.processes import process_alive
from phase2.infra.recovery import flow_run_process_alive, recover_orphaned_runs
from tests.plugins.data import TINY_RECIPE
from tests.plugins.flow_runs import flow_run_id, trigger, wait_until


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


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_killed_worker_run_is_recovered_and_resumed(
    local_stack, small_real_dataset, tmp_path, webhook_secret_block, reliability_log
):
    from prefect.client.orchestration import get_client

    from phase2.infra.prefect_stack import PrefectWorker

    recipe = {**TINY_RECIPE, "name": "death", "train": {**TINY_RECIPE["train"], "epochs": 4}}
    recipe_file = tmp_path / "death.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    run_name = f"death-{uuid.uuid4().hex[:6]}"
    params = {
        "data": str(small_real_dataset),
        "baseline": "yolo11n.yaml",
        "recipe_name": str(recipe_file),
        "model_name": run_name,
        "run_name": run_name,
    }
    train_dir = local_stack.state / "pipeline" / run_name / "train"
    env = local_stack.env()
    started = subprocess.run(
        trigger("train", params, watch_timeout=None), env=env, capture_output=True, text=True, timeout=120
    )
    first_id = flow_run_id(started.stdout + started.stderr)

    def epochs_done() -> int:
        try:
            return len((train_dir / "results.csv").read_text().strip().splitlines()) - 1
        except OSError:
            return 0

    wait_until(lambda: epochs_done() >= 1 and (train_dir / "weights" / "last.pt").exists(), 600, "epoch 1")
    with get_client(sync_client=True) as client:
        flow_pid = int(client.read_flow_run(first_id).infrastructure_pid)
        os.killpg(local_stack.worker.record().pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # in the worker's group, or not
            os.kill(flow_pid, signal.SIGKILL)  # training dies with it (PDEATHSIG)
        wait_until(lambda: not process_alive(flow_pid), 30, "flow-run process gone")
        time.sleep(3)
        assert epochs_done() < 4, "training finished before the kill; make it longer"
        assert client.read_flow_run(first_id).state.is_running()  # Prefect issue #16746

        recovered = recover_orphaned_runs()
        assert first_id in [str(r.id) for r in recovered]
        assert client.read_flow_run(first_id).state.is_crashed()
        assert first_id not in [str(r.id) for r in recover_orphaned_runs(dry_run=True)]  # idempotent
    crashed = webhook_secret_block.wait_for("crashed")
    assert crashed["flow_run_id"] == first_id and f"{flow_pid} is gone" in crashed["message"]

    epochs_before = epochs_done()
    PrefectWorker(local_stack.state, pool=local_stack.pool).start(env)
    second = subprocess.run(trigger("train", params), env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    result = json.loads((train_dir / "COMPLETE.json").read_text())
    # Resumed after the last epoch whose last.pt was saved (results.csv may be one row ahead).
    assert 1 <= result["resumed_from_epoch"] <= epochs_before
    assert result["epochs_completed"] == 4
    rows = (train_dir / "results.csv").read_text().strip().splitlines()[1:]
    assert [int(float(r.split(",")[0])) for r in rows] == [1, 2, 3, 4]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id(second.stdout + second.stderr)).state.is_completed()
    reliability_log(
        "fault",
        "worker killed mid-run (flow-run process gone)",
        expected="run marked Crashed, slot freed, webhook sent; re-run resumes training",
        observed=f"Crashed; re-run resumed after epoch {result['resumed_from_epoch']} and completed 4 epochs",
    )
