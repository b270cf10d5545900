"""Real deployments on a real Prefect server + process worker: a retried transient fault, a
second trigger that waits for the concurrency slot, webhook messages on promotion and failure,
and the scheduled retraining that finishes early when the data is unchanged."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import yaml

from phase2.infra.recovery import FAULTS_VARIABLE
from tests.plugins.data import TINY_RECIPE
from tests.plugins.flow_runs import flow_run_id, trigger, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_retry_concurrency_and_notifications(local_stack, small_real_dataset, tmp_path, webhook_secret_block):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.variables import Variable

    receiver = webhook_secret_block
    recipe_file = tmp_path / "tiny.yaml"
    # One epoch is enough here; promotion absolute_min mAP50 0.0: the first version is promoted.
    recipe_file.write_text(yaml.safe_dump({**TINY_RECIPE, "train": {**TINY_RECIPE["train"], "epochs": 1}}))
    model_name = f"sched-{uuid.uuid4().hex[:6]}"
    env = local_stack.env()
    Variable.set(FAULTS_VARIABLE, "rebalance_validation", overwrite=True)
    try:
        first = subprocess.Popen(
            trigger(
                "train",
                {
                    "data": str(small_real_dataset),
                    "baseline": "yolo11n.yaml",
                    "recipe_name": str(recipe_file),
                    "model_name": model_name,
                },
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with get_client(sync_client=True) as client:
            # The first run's id, once it holds the slot (Running).
            first_id = wait_until(
                lambda: next(
                    (
                        str(r.id)
                        for r in client.read_flow_runs()
                        if r.parameters.get("model_name") == model_name and r.state.is_running()
                    ),
                    None,
                ),
                120,
                "first run Running",
            )
            # A second trigger while the first trains: a run that will fail (no data.yaml).
            second = subprocess.run(
                trigger(
                    "train",
                    {
                        "data": str(tmp_path / "missing" / "data.yaml"),
                        "baseline": "yolo11n.yaml",
                        "model_name": model_name,
                    },
                ),
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            first_output = first.communicate(timeout=900)[0]
            second_id = flow_run_id(second.stdout + second.stderr)
            first_run = client.read_flow_run(first_id)
            second_run = client.read_flow_run(second_id)
            second_states = [s.name for s in client.read_flow_run_states(second_id)]
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first_id])))
            rebalance = next(t for t in task_runs if t.name.startswith("rebalance_validation"))
            rebalance_states = [s.name for s in client.read_task_run_states(rebalance.id)]
    finally:
        Variable.unset(FAULTS_VARIABLE)

    assert first.returncode == 0, first_output[-4000:]
    assert first_run.state.is_completed()
    assert all(t.state.is_completed() for t in task_runs), [(t.name, t.state.type) for t in task_runs]
    # The injected transient fault failed rebalance_validation once; the retry completed it.
    assert rebalance.run_count == 2 and "AwaitingRetry" in rebalance_states, rebalance_states
    assert (local_stack.state / "faults" / f"{first_id}-rebalance_validation").is_file()

    # The second trigger queued behind the first: it ran only after the first had finished.
    assert second.returncode == 1, second.stdout[-3000:]
    assert "AwaitingConcurrencySlot" in second_states, second_states
    assert second_run.state.is_failed()
    assert second_run.start_time >= first_run.end_time, (second_run.start_time, first_run.end_time)

    promoted = receiver.wait_for("promoted")
    assert promoted["model"] == f"{model_name}:v1" and promoted["flow_run_id"] == first_id
    failed = receiver.wait_for("failed")
    assert failed["flow_run_id"] == second_id and "data.yaml not found" in failed["message"]
    assert failed["parameters"]["model_name"] == model_name


def test_scheduled_retrain_with_unchanged_data_finishes_early(local_stack, small_real_dataset, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from phase2.dataset.rebalance import dataset_version_id
    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.registry.registry import Registry
    from phase2.registry.storage import ObjectStore

    # Production was trained on exactly this dataset (lineage: the source version id).
    model_name = f"nightly-{uuid.uuid4().hex[:6]}"
    store = ObjectStore(resolve_s3_settings())
    store.ensure_bucket()
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"stand-in weights: never loaded when the run is skipped")
    registry = Registry(store, model_name)
    version = registry.register(
        {"weights/best.pt": weights}, {"dataset": {"source_version_id": dataset_version_id(small_real_dataset)}}
    )
    registry.set_alias("production", version.version)

    started = time.monotonic()
    proc = subprocess.run(
        trigger(
            "scheduled-retrain",
            {"data": str(small_real_dataset), "baseline": f"{model_name}:production", "model_name": model_name},
            watch_timeout=120,
        ),
        env=local_stack.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run_id = flow_run_id(proc.stdout + proc.stderr)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        task_names = {
            t.name.rsplit("-", 1)[0]
            for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        }
        logs = " ".join(
            entry.message
            for entry in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        )
    assert run.state.is_completed() and run.parameters["skip_if_unchanged"] is True
    assert task_names == {"plan_run"}  # nothing validated, trained or registered
    assert f"no new data: dataset {dataset_version_id(small_real_dataset)[:12]}" in logs
    assert f"{model_name}:v1" in logs
    # The run itself (Running → Completed) is the < 30 s requirement; the trigger's wall time adds
    # the CLI and flow-run process start-ups (~10 s), which a loaded CI machine can stretch.
    assert (run.end_time - run.start_time).total_seconds() < 30
    assert wall_s < 60, f"trigger to Completed took {wall_s:.1f} s"


def test_scheduled_retrain_with_changed_data_says_what_changed(
    local_stack, small_real_dataset, tmp_path, webhook_secret_block
):
    """Production's registered dataset listing vs today's data: the scheduled run retrains and its
    log and webhook say what changed (here: one test image removed, one box's class changed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from phase2.dataset.diff import REGISTRY_LISTING, dataset_listing
    from phase2.dataset.rebalance import dataset_version_id
    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.registry.registry import Registry
    from phase2.registry.storage import ObjectStore

    model_name = f"changed-{uuid.uuid4().hex[:6]}"
    store = ObjectStore(resolve_s3_settings())
    store.ensure_bucket()
    listing = tmp_path / "listing.json"
    listing.write_text(dataset_listing(small_real_dataset).model_dump_json())
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    production = YOLO("yolo11n.yaml")  # random weights: the promotion gate evaluates them, nothing else
    names = yaml.safe_load(small_real_dataset.read_text())["names"]
    production.model = DetectionModel("yolo11n.yaml", nc=len(names), verbose=False)
    production.model.names = dict(enumerate(names))
    weights = tmp_path / "best.pt"
    production.save(str(weights))
    registry = Registry(store, model_name)
    version = registry.register(
        {"weights/best.pt": weights, REGISTRY_LISTING: listing},
        {"dataset": {"source_version_id": dataset_version_id(small_real_dataset)}},
    )
    registry.set_alias("production", version.version)
    root = small_real_dataset.parent
    removed, relabelled = sorted((root / "test" / "images").iterdir())[:2]
    removed.unlink()
    (root / "test" / "labels" / (removed.stem + ".txt")).unlink(missing_ok=True)
    label = root / "test" / "labels" / (relabelled.stem + ".txt")
    first, *rest = label.read_text().splitlines()
    cls, *box = first.split()
    label.write_text("\n".join([f"{(int(cls) + 1) % 4} {' '.join(box)}", *rest]) + "\n")
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump({**TINY_RECIPE, "train": {**TINY_RECIPE["train"], "epochs": 1}}))

    proc = subprocess.run(
        trigger(
            "scheduled-retrain",
            {
                "data": str(small_real_dataset),
                "baseline": "yolo11n.yaml",
                "recipe_name": str(recipe_file),
                "model_name": model_name,
            },
        ),
        env=local_stack.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run_id = flow_run_id(proc.stdout + proc.stderr)
    message = webhook_secret_block.wait_for("retraining")
    assert message["flow_run_id"] == run_id
    assert message["changes"]["images"] == {"added": 0, "removed": 1, "modified": 0, "moved": 0}
    assert message["changes"]["labels_changed"] == 1 and message["changes"]["new_leaks"] == 0
    assert message["changes"]["old"] == version.dataset["source_version_id"]
    assert f"test/images/{removed.name}" not in message["text"]  # counts in the message, not the lists
    assert "1 images removed" in message["text"] and "1 class changed" in message["text"]
    with get_client(sync_client=True) as client:
        logs = " ".join(
            entry.message
            for entry in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        )
    assert f"what changed: since {model_name}:v1: dataset" in logs and "1 images removed" in logs
