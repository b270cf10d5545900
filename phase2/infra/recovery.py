"""Recovery from a dead worker, and the test-only one-shot fault used to exercise retries.

A process worker killed mid-run (kill -9, OOM, reboot) leaves its flow run Running: nothing is
left to report the crash, and the run keeps the deployment's concurrency slot until its lease
expires (Prefect issue #16746). :func:`recover_orphaned_runs` finds such runs of the `phase2`
flow, whose flow-run process (the run's ``infrastructure_pid``, on this host) is gone, marks
them Crashed (freeing the slot) and sends the crash notification the dead worker could not.
The next run with the same inputs has the same run key and resumes from the last checkpoint.

Only process pools are checked: a docker container or kubernetes job outlives its worker and
is still running, and its infrastructure id is not a local pid. Run it on the worker's host.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from uuid import UUID

import psutil
from pydantic import BaseModel

from phase2.infra import notifications
from phase2.infra.processes import process_alive
from phase2.infra.settings import state_dir

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import State

FLOW_NAME = "phase2"
FAULTS_VARIABLE = "phase2_faults"
FLOW_RUN_ID_ENV = "PREFECT__FLOW_RUN_ID"


class OrphanedRun(BaseModel):
    id: UUID
    name: str
    deployment_id: UUID | None
    work_pool: str | None
    state: str
    infrastructure_pid: int


def flow_run_process_alive(pid: int, flow_run_id: UUID | str | None = None) -> bool:
    """A live (not zombie) process; when its environment is readable and names a flow run,
    it must be this one (a reused pid is not our run)."""
    if not process_alive(pid):
        return False
    if flow_run_id is None:
        return True
    try:
        running = psutil.Process(pid).environ().get(FLOW_RUN_ID_ENV)
    except psutil.AccessDenied:  # another user's process: alive, identity unknown
        return True
    except psutil.NoSuchProcess:
        return False
    return running is None or running == str(flow_run_id)


def find_orphaned_runs(client: SyncPrefectClient) -> list[OrphanedRun]:
    """Pending/Running/Cancelling runs of the phase2 flow in process pools whose process is gone."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    active = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING])
        )
    )
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])), flow_run_filter=active)
    pool_types: dict[str, str] = {}
    orphans = []
    for run in runs:
        if not (run.infrastructure_pid or "").isdigit() or not run.work_pool_name:
            continue  # not started yet, or not a local process
        if run.work_pool_name not in pool_types:
            pool_types[run.work_pool_name] = client.read_work_pool(run.work_pool_name).type
        if pool_types[run.work_pool_name] != "process":
            continue
        pid = int(run.infrastructure_pid or "")
        if not flow_run_process_alive(pid, run.id):
            orphans.append(
                OrphanedRun(
                    id=run.id,
                    name=run.name,
                    deployment_id=run.deployment_id,
                    work_pool=run.work_pool_name,
                    state=run.state.type.value if run.state else "UNKNOWN",
                    infrastructure_pid=pid,
                )
            )
    return orphans


def recover_orphaned_runs(*, dry_run: bool = False, notify: bool = True) -> list[OrphanedRun]:
    """Mark orphaned phase2 runs Crashed (frees their concurrency slot); returns them."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        orphans = find_orphaned_runs(client)
        if dry_run:
            return orphans
        for orphan in orphans:
            state: State[None] = Crashed(
                message=f"flow-run process {orphan.infrastructure_pid} is gone (worker died); "
                "marked crashed by `phase2 recover`"
            )
            client.set_flow_run_state(orphan.id, state, force=True)
            if notify:
                notifications.send(
                    notifications.flow_run_notification("crashed", client.read_flow_run(orphan.id), state)
                )
    return orphans


class InjectedFault(RuntimeError):
    """A deliberate, one-shot failure (tests of the retry path)."""


def fail_once_if_injected() -> None:
    """Test-only: fail the calling task once per flow run when its name is listed in the
    Prefect Variable `phase2_faults` (comma-separated task names); the retry then passes.

    A Variable, not a parameter or env var, so a running worker sees it and a run's inputs
    (and thus its run key) stay untouched. Unset, it costs one API read.
    """
    from prefect import runtime
    from prefect.variables import Variable

    names = {n.strip() for n in str(Variable.get(FAULTS_VARIABLE, default="") or "").split(",")}
    task = runtime.task_run.task_name
    if task not in names:
        return
    marker = state_dir() / "faults" / f"{runtime.flow_run.id}-{task}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    raise InjectedFault(f"injected transient fault in {task} (Prefect Variable {FAULTS_VARIABLE})")
