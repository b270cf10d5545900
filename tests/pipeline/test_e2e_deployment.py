"""End to end through the real deployment: `prefect deployment run phase2/train --watch` on a
real Prefect server + process worker, real SeaweedFS, W&B offline, real Ultralytics training
on a small copy of the real dataset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from phase2.infra.files import sha256_file
from phase2.infra.seaweedfs import resolve_s3_settings
from phase2.infra.tracking import offline_history
from phase2.registry.registry import Registry
from phase2.registry.storage import ObjectStore
from tests.plugins.data import TINY_RECIPE
from tests.plugins.flow_runs import flow_run_id, trigger

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_deployment_run_end_to_end(local_stack, small_real_dataset, tmp_path):
    recipe_file = tmp_path / "e2e-tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(TINY_RECIPE))
    env = local_stack.env()
    params = {"data": str(small_real_dataset), "baseline": "yolo11n.yaml", "recipe_name": str(recipe_file)}
    proc = subprocess.run(
        trigger("train", params, watch_timeout=800), env=env, capture_output=True, text=True, timeout=860
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    run_id = flow_run_id(output)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    assert flow_run.state.is_completed()
    names = {t.name.rsplit("-", 1)[0] for t in task_runs}
    assert {
        "validate_dataset",
        "rebalance_validation",
        "fine_tune",
        "select_checkpoint",
        "register_model",
        "promote_model",
    } <= names
    assert all(t.state.is_completed() for t in task_runs), [(t.name, t.state.type) for t in task_runs]

    summary = yaml.safe_load((local_stack.state / "pipeline" / "flow-runs" / f"{run_id}.json").read_text())
    run_prefix = summary["run_uri"].split("/", 3)[3]  # runs/<key>/train
    work = local_stack.state / "pipeline" / run_prefix.split("/")[1]
    train_dir = work / "train"

    # Training read the rebalanced version: image lists, not copies.
    args = yaml.safe_load((train_dir / "args.yaml").read_text())
    assert Path(args["data"]) == work / "dataset" / "data.yaml"
    assert (work / "dataset" / "val.txt").read_text().strip()

    # Checkpoints, results.csv and the model manifest are in the bucket, checksums matching.
    store = ObjectStore(resolve_s3_settings())
    for name in ("weights/last.pt", "weights/best.pt", "results.csv"):
        assert store.head(f"{run_prefix}/{name}")["sha256"] == sha256_file(train_dir / name)
    registry = Registry(store)
    version = registry.get(summary["model"])
    checkpoints = {sha256_file(p) for p in (train_dir / "weights").glob("*.pt")}
    assert version.files["weights/best.pt"].sha256 in checkpoints
    assert store.exists(f"models/{version.name}/versions/v{version.version}/manifest.json")
    assert version.ref in {v.ref for v in registry.list_versions()}

    # W&B offline run: one history row per epoch, each with mAP50.
    run_dir = Path(summary["wandb_run"].removeprefix("offline:"))
    rows = [r for r in offline_history(run_dir) if "metrics/mAP50" in r]
    assert [r["epoch"] for r in rows] == [1, 2]
