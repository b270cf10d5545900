"""Secrets never leak; untrusted weights are never unpickled.

The secret scan runs the real phase2 flow (tiny recipe, real data) in its own process against a
dedicated Prefect server and a dedicated SeaweedFS that enforces known fake credentials, with
more fake secrets in the environment, then reads back everything the run produced.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from phase2.infra.prefect_stack import PrefectServer, free_port
from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts
from phase2.registry.registry import Registry
from phase2.registry.storage import IntegrityError, ObjectStore
from phase2.training.fine_tune import TrainingFailed, fine_tune
from tests.plugins.flow_runs import flow_env, prefect_client, start_flow, tiny_recipe_file
from tests.plugins.webhook import WebhookReceiver

# Recognisable fake secrets: any occurrence anywhere is a leak.
FAKE_S3 = {"AWS_ACCESS_KEY_ID": "PHASE2CANARYKEYID7Q3", "AWS_SECRET_ACCESS_KEY": "canary-s3-secret-Zq8vX3pL9wK2mN5r"}
FAKE_OTHER = {
    "AWS_SESSION_TOKEN": "canary-session-token-Hj4kL8pQ2w",
    "PHASE2_EXTRA_API_TOKEN": "canary-api-token-Rt6yU1iO",
    "PHASE2_REGISTRY_CREDENTIAL": "canary-credential-Ws5eD9fG",
}
WEBHOOK_TOKEN = "canary-webhook-token-Bn3mV7cX"


@pytest.fixture
def prefect_server(tmp_path) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path / "prefect-server", port=free_port(), ui=False).start()
    try:
        yield server
    finally:
        server.stop()


def occurrences(blob: bytes, secrets: list[str]) -> dict[str, int]:
    return {s: blob.count(s.encode()) for s in secrets if blob.count(s.encode())}


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.slow
def test_flow_run_leaks_no_secret(small_real_dataset, tmp_path, prefect_server, monkeypatch, reliability_log):
    for key, value in FAKE_S3.items():  # the dedicated SeaweedFS enforces exactly these
        monkeypatch.setenv(key, value)
    s3 = SeaweedFS(tmp_path / "s3-server", ports=SeaweedPorts.free()).start()
    receiver = WebhookReceiver()
    secrets = [*FAKE_S3.values(), *FAKE_OTHER.values(), WEBHOOK_TOKEN]
    try:
        state = tmp_path / "flow-state"
        env = flow_env(
            state,
            prefect_server.api_url,
            s3.env(),
            **FAKE_OTHER,
            PHASE2_NOTIFY_WEBHOOK=f"{receiver.url}/{WEBHOOK_TOKEN}",
        )
        flow = start_flow(
            state,
            env,
            data=str(small_real_dataset),
            baseline="yolo11n.yaml",
            recipe_name=str(tiny_recipe_file(tmp_path)),
        )
        code, console = flow.wait(timeout=800)
        assert code == 0, console[-4000:]
        receiver.wait_for("promoted")

        with prefect_client(prefect_server.api_url) as client:
            from prefect.client.schemas.filters import (
                ArtifactFilter,
                ArtifactFilterFlowRunId,
                FlowRunFilter,
                FlowRunFilterId,
                LogFilter,
                LogFilterFlowRunId,
            )

            # The run's own id, written by its finish step (the server may hold other runs).
            (summary,) = (state / "pipeline" / "flow-runs").glob("*.json")
            flow_run = client.read_flow_run(summary.stem)
            ids = [flow_run.id]
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200)
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            )
        assert flow_run.state.is_completed() and len(logs) > 5 and len(artifacts) > 5 and len(task_runs) >= 8

        store = ObjectStore(s3.settings())
        keys = store.list()
        # The servers' own logs live in their state dirs, not the flow's: scanned too.
        service_logs = [s3.log_file, prefect_server.log_file]
        assert all(log.is_file() and log.stat().st_size > 0 for log in service_logs), service_logs
        state_files = [p for p in state.rglob("*") if p.is_file()]
        wandb_files = [p for p in state_files if "wandb" in p.parts]
        report_html = [p for p in state_files if p.name == "report.html"]
        assert keys and wandb_files and report_html and any(p.suffix == ".wandb" for p in wandb_files)
        assert os.environ.get("WANDB_API_KEY") is None
        assert any("offline-run-" in str(p) for p in wandb_files), "W&B must have stayed offline"

        places = {
            "console output": [console.encode()],
            "Prefect logs": [log.model_dump_json().encode() for log in logs],
            "flow run (parameters, state)": [flow_run.model_dump_json().encode()],
            "task runs": [t.model_dump_json().encode() for t in task_runs],
            "Prefect artifacts": [a.model_dump_json().encode() for a in artifacts],
            "S3 objects": [store.get_bytes(k)[0] for k in keys],
            "state dir (W&B run files, reports, logs)": [p.read_bytes() for p in state_files],
            "SeaweedFS and Prefect server logs": [log.read_bytes() for log in service_logs],
            "webhook messages": receiver.raw,
        }
        leaks = {
            where: found for where, blobs in places.items() for blob in blobs if (found := occurrences(blob, secrets))
        }
        tried = sum(len(blobs) for blobs in places.values())
        for where, blobs in places.items():
            reliability_log(
                "security",
                f"secret scan: {where}",
                tried=max(1, len(blobs)),
                expected=f"0 occurrences of {len(secrets)} fake secrets",
                observed=f"{sum(1 for w in leaks if w == where)} leaks in {len(blobs)} items",
            )
        assert not leaks, f"secrets leaked: {leaks}"
        assert tried > 100
    finally:
        receiver.close()
        s3.stop()


# --- untrusted weights ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random-bytes", "text-file", "missing", "empty"])
def test_baseline_that_is_not_a_checkpoint_is_refused_before_unpickling(tmp_path, kind, reliability_log):
    weights = tmp_path / "baseline.pt"
    if kind == "random-bytes":
        weights.write_bytes(os.urandom(4096))
    elif kind == "text-file":
        weights.write_text("this is not a model\n")
    elif kind == "empty":
        weights.write_bytes(b"")
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("train: x\nval: x\nnames: [a]\n")
    with pytest.raises(TrainingFailed) as err:
        fine_tune(
            weights=weights,
            data_yaml=data_yaml,
            train_args={"epochs": 1},
            save_dir=tmp_path / "train",
            run_prefix="runs/x/train",
        )
    message = str(err.value)
    assert str(weights) in message and "not a PyTorch checkpoint" in message
    assert "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "train").exists() and not (tmp_path / "train.log").exists(), "no child was started"
    reliability_log(
        "bad input",
        "baseline weights that are not a checkpoint (random bytes, text, empty, missing)",
        expected="one-line error naming the file; nothing unpickled, no training started",
        observed=message.split(":", 1)[1].strip()[:80],
    )


def test_tampered_s3_baseline_is_refused_and_not_cached(object_store, tmp_path, reliability_log):
    good = tmp_path / "base.pt"
    good.write_bytes(b"PK" + os.urandom(2048))
    object_store.put_file(good, "baselines/base.pt")
    # Replace the bytes but keep the old sha256 metadata: what an attacker with bucket write would do.
    original = object_store.head("baselines/base.pt")["sha256"]
    object_store._client.put_object(
        Bucket=object_store.bucket, Key="baselines/base.pt", Body=b"evil pickle", Metadata={"sha256": original}
    )
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match="does not match"):
        Registry(object_store).resolve_reference(object_store.uri("baselines/base.pt"), cache_dir=cache)
    assert not [p for p in cache.rglob("*") if p.is_file()], "nothing of the tampered file may stay on disk"
    reliability_log(
        "bad input",
        "s3:// baseline whose bytes were replaced (sha256 metadata kept)",
        expected="IntegrityError before it is loaded; nothing cached",
        observed="IntegrityError: sha256 does not match; cache empty",
    )
