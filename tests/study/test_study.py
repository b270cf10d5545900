"""The recipe study flow for real: 2 tiny recipes x 2 seeds on a small copy of the real dataset,
real SeaweedFS and Prefect server, real Ultralytics training (1 epoch at 64 px), W&B offline.

Every per-run number is re-derived here with Ultralytics' own ``model.val()`` on the study's
dataset version, and the per-recipe mean and sd with :mod:`statistics`."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from phase2.infra.prefect_stack import PrefectServer, free_port
from phase2.registry.registry import Registry
from phase2.training.recipe import Recipe
from tests.plugins.data import TINY_RECIPE, copy_subset

MODEL_NAME = "study-test-detector"
SEEDS = [0, 1]


def _recipe_file(path: Path, name: str, **train: object) -> str:
    data = {**TINY_RECIPE, "name": name, "train": {**TINY_RECIPE["train"], "epochs": 1, "save_period": -1, **train}}
    Recipe.model_validate(data)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _independent_values(weights: Path, data_yaml: Path, imgsz: int, minority: int) -> dict[str, float]:
    from ultralytics import YOLO

    box = (
        YOLO(str(weights))
        .val(data=str(data_yaml), split="val", imgsz=imgsz, conf=0.001, iou=0.7, batch=16, plots=False, verbose=False)
        .box
    )
    classes = list(box.ap_class_index)
    return {
        "mAP50": float(box.map50),
        "mAP50-95": float(box.map),
        "minority AP50": float(box.ap50[classes.index(minority)]),
    }


def test_study_reports_mean_and_spread_per_recipe_and_registers_nothing(object_store, real_dataset, tmp_path):
    from flows.study import phase2_study

    data_yaml = copy_subset(real_dataset, tmp_path / "site-small", {"train": 8, "val": 6, "test": 2})
    recipes = [
        _recipe_file(tmp_path / "a.yaml", "tiny-a"),
        _recipe_file(tmp_path / "b.yaml", "tiny-b", lr0=0.01, warmup_bias_lr=0.01),
    ]
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        server = PrefectServer(tmp_path / "prefect-server", port=free_port(), ui=False)
        api_url = server.start().api_url
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):  # S3: the object_store fixture's bucket
            result = phase2_study(
                data=str(data_yaml),
                baseline="yolo11n.yaml",
                recipes=recipes,
                seeds=SEEDS,
                resamples=200,
                model_name=MODEL_NAME,
            )
            artifact = _table_artifact(f"study-recipes-{MODEL_NAME}")
    finally:
        if not os.environ.get("PREFECT_API_URL"):
            server.stop()
    store = object_store

    # One row per recipe, in the order given, each with both seeds.
    assert [r["recipe"] for r in result["recipes"]] == ["tiny-a", "tiny-b"]
    assert [r["seeds"] for r in result["recipes"]] == [SEEDS, SEEDS]
    assert [row["recipe"] for row in result["table"]] == ["tiny-a", "tiny-b"]
    assert [row["recipe"] for row in artifact] == ["tiny-a", "tiny-b"]
    assert len({run["run_key"] for run in result["runs"]}) == 4  # each fine-tune its own run

    # Every per-run number equals Ultralytics' own val() on the study's dataset version; the
    # per-recipe mean and sd are those of the per-run numbers.
    dataset_yaml = Path(result["dataset"])  # the rebalanced version every run trained on
    names = yaml.safe_load(data_yaml.read_text())["names"]
    minority_id = list(names.values() if isinstance(names, dict) else names).index("toe_drain")
    for recipe_row in result["recipes"]:
        runs = [r for r in result["runs"] if r["recipe"] == recipe_row["recipe"]]
        values = [_independent_values(Path(r["weights"]), dataset_yaml, 64, minority_id) for r in runs]
        for metric, spread in recipe_row["metrics"].items():
            per_run = [v[metric] for v in values]
            assert [r["metrics"][metric] for r in runs] == pytest.approx(per_run, abs=1e-4)
            assert spread["mean"] == pytest.approx(statistics.fmean(per_run), abs=1e-4)
            assert spread["sd"] == pytest.approx(statistics.stdev(per_run), abs=1e-4)
        assert recipe_row["compute_s"] == pytest.approx(sum(r["wall_time_s"] for r in runs))

    # A paired comparison B vs A, pooled and per seed, with intervals around the point Δ.
    (comparison,) = result["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("tiny-a", "tiny-b")
    assert [s["seed"] for s in comparison["per_seed"]] == SEEDS
    means = {r["recipe"]: r["metrics"]["mAP50"]["mean"] for r in result["recipes"]}
    pooled = comparison["pooled"]["mAP50"]
    assert pooled["value"] == pytest.approx(means["tiny-b"] - means["tiny-a"])
    assert pooled["ci95"][0] <= pooled["ci95"][1] and 0 <= pooled["p_b_better"] <= 1

    # The page and the JSON are written and uploaded; nothing was registered.
    html = Path(result["files"]["study.html"]).read_text()
    assert html.count('data-recipe="') == 2 and "Nothing was registered" in html
    assert json.loads(Path(result["files"]["study.json"]).read_text())["recipes"] == result["recipes"]
    assert store.exists(f"runs/{result['study']}/report/study.html")
    assert Registry(store, MODEL_NAME).list_versions() == []


def _table_artifact(key: str) -> list[dict]:
    """The latest Prefect table artifact under ``key``, read back from the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (latest,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1)
    return json.loads(latest.data) if isinstance(latest.data, str) else latest.data
