"""One real tiny pipeline run shared by the report tests: the phase2 flow in-process on a small
copy of the real dataset, real SeaweedFS and Prefect server, W&B offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.train import phase2
from phase2.infra.prefect_stack import PrefectServer, free_port
from phase2.registry.registry import Registry
from phase2.registry.storage import ObjectStore
from phase2.runs import resolve_run
from phase2.training.recipe import Recipe
from tests.plugins.data import TINY_RECIPE, copy_subset

MODEL_NAME = "report-test-detector"


def _untrained_baseline(path: Path, names: list[str]) -> Path:
    """A 4-class YOLO11n checkpoint (random weights): the baseline and the 'production' model."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    model = YOLO("yolo11n.yaml")
    model.model = DetectionModel("yolo11n.yaml", nc=len(names), verbose=False)
    model.model.names = dict(enumerate(names))
    model.save(str(path))
    return path


def _prefect_api(request, root: Path) -> str:
    """The session's Prefect server if one is up (local_stack), else a real one for these tests
    (Prefect's temporary in-process server can miss its 20 s start limit on 2 busy cores)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    server = PrefectServer(root / "prefect-server", port=free_port(), ui=False)
    request.config.add_cleanup(server.stop)
    return server.start().api_url


@pytest.fixture(scope="session")
def pipeline_run(request, seaweedfs, real_dataset, tmp_path_factory) -> dict[str, Any]:
    """Run the flow once per test session (shared by the report tests); production = the baseline."""
    root = tmp_path_factory.mktemp("report-run")
    data_yaml = copy_subset(real_dataset, root / "site-small", {"train": 8, "val": 4, "test": 3})
    names = yaml.safe_load(data_yaml.read_text())["names"]
    baseline = _untrained_baseline(root / "baseline.pt", list(names.values()) if isinstance(names, dict) else names)
    # Train is label-reviewed too, through 2 fold models of 1 epoch each (the flow's k-fold path).
    kfold = {"kfold_train": True, "folds": 2, "kfold_epochs": 1}
    recipe = Recipe.model_validate({**TINY_RECIPE, "label_review": kfold})
    api_url = _prefect_api(request, root)
    with pytest.MonkeyPatch.context() as patch, temporary_settings({PREFECT_API_URL: api_url}):
        for key, value in seaweedfs.env().items():
            patch.setenv(key, value)
        store = ObjectStore(seaweedfs.settings())
        store.ensure_bucket()
        registry = Registry(store, MODEL_NAME)
        production = registry.register({"weights/best.pt": baseline}, {"flow_run_id": "report-test-production"})
        registry.set_alias("production", production.version)
        state = phase2(
            data=str(data_yaml), baseline=str(baseline), recipe=recipe, model_name=MODEL_NAME, return_state=True
        )
    assert state.is_completed(), state
    summary = state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    return {
        "summary": summary,
        "flow_run_id": flow_run_id,
        "layout": resolve_run(flow_run_id),
        "minority_class": recipe.minority_class,
        "store": store,
        "api_url": api_url,
        "version": registry.get(summary["model"]),
        "production": production,
        "baseline": baseline,
    }
