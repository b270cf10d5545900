"""`phase2 evaluate` / `phase2 compare` on the real val split with a model trained here: point
values equal Ultralytics' model.val(), W vs W gives Δ = 0, `--json` prints JSON only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phase2.evaluation.evaluate import EvalProtocol
from phase2.evaluation.matches import collect_matches
from phase2.evaluation.uncertainty import METRICS, evaluate_table
from tests.evaluation.conftest import label_instances
from tests.plugins.data import copy_subset

NAMES = ["rock_toe", "slope_drain", "toe_drain", "vegetation"]
IMGSZ = 96


def phase2_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed `phase2` command in a subprocess."""
    phase2 = Path(sys.executable).parent / "phase2"
    return subprocess.run([str(phase2), *args], capture_output=True, text=True, env=os.environ.copy(), timeout=600)


@pytest.fixture(scope="module")
def weights(real_dataset, tmp_path_factory) -> Path:
    """yolo11n from scratch, 60 epochs on 8 real val images (copied), one optimizer step per
    batch: enough for true positives on the val split, so that equal numbers mean something
    (the 2-epoch conftest model finds nothing there and every metric is 0)."""
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("uncertainty")
    data_yaml = copy_subset(real_dataset, root / "data", {"val": 8})
    shutil.copytree(root / "data" / "val", root / "data" / "train")
    YOLO("yolo11n.yaml").train(
        data=str(data_yaml), imgsz=IMGSZ, epochs=60, batch=4, nbs=4, optimizer="SGD", lr0=0.05, mosaic=0.0,
        warmup_epochs=0, workers=0, val=False, plots=False, amp=False, device="cpu",
        project=str(root / "runs"), name="train", exist_ok=True, verbose=False,
    )  # fmt: skip
    return root / "runs" / "train" / "weights" / "last.pt"


def test_point_values_equal_model_val_on_the_real_val_split(weights, real_dataset, tmp_path):
    from ultralytics import YOLO

    table = collect_matches(weights, real_dataset / "data.yaml", EvalProtocol(split="val", imgsz=IMGSZ))
    result = evaluate_table(table, resamples=1000, seed=0)

    copy = copy_subset(real_dataset, tmp_path / "real", {"train": 1, "val": 100_000})
    reference = YOLO(str(weights)).val(
        data=str(copy), split="val", imgsz=IMGSZ, conf=0.001, iou=0.7, batch=16, plots=False,
        project=str(tmp_path / "runs"), name="val", verbose=False,
    )  # fmt: skip
    box = reference.box
    assert result["n_images"] == len(list((real_dataset / "val" / "images").iterdir())) == 45
    assert result["instances"] == label_instances(real_dataset / "val", NAMES)
    assert result["bootstrap"] == {"resamples": 1000, "seed": 0, "method": "percentile", "unit": "image", "level": 0.95}
    expected = {"precision": box.mp, "recall": box.mr, "mAP50": box.map50, "mAP50-95": box.map}
    assert expected["mAP50"] > 0 and expected["recall"] > 0  # a model that finds something: equality means something
    for name in METRICS:
        assert result["metrics"][name]["value"] == pytest.approx(expected[name], abs=1e-4), name
        assert result["metrics"][name]["value"] == pytest.approx(expected[name], rel=1e-9, abs=1e-15), name
        low, high = result["metrics"][name]["ci95"]
        assert 0.0 <= low <= high <= 1.0
    assert result["metrics"]["recall"]["ci95"][1] > result["metrics"]["recall"]["ci95"][0]  # 45 images: not exact
    for i, c in enumerate(box.ap_class_index):
        entry = result["per_class"][NAMES[c]]
        assert entry["AP50"]["value"] == pytest.approx(box.ap50[i], rel=1e-9, abs=1e-15), NAMES[c]
        assert entry["AP50-95"]["value"] == pytest.approx(box.ap[i], rel=1e-9, abs=1e-15), NAMES[c]


def test_compare_same_weights_gives_zero_delta_as_pure_json(weights, real_dataset):
    weights = str(weights)
    data = str(real_dataset / "data.yaml")
    done = phase2_cli("compare", weights, weights, "--data", data, "--split", "val", "--imgsz", str(IMGSZ), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # stdout is JSON only: Ultralytics' output went to stderr
    assert set(result) == {"a", "b", "delta", "per_class_delta"}
    assert result["a"]["metrics"] == result["b"]["metrics"]
    for name in METRICS:
        assert result["delta"][name] == {"value": 0.0, "ci95": [0.0, 0.0], "p_b_better": 0.0}, name
    for name, entries in result["per_class_delta"].items():
        for entry in entries.values():
            assert entry["value"] in (0.0, None) and entry["ci95"] in ([0.0, 0.0], None), name

    evaluated = phase2_cli("evaluate", weights, "--data", data, "--split", "val", "--imgsz", str(IMGSZ), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["metrics"] == result["a"]["metrics"]

    missing = phase2_cli("evaluate", "/nonexistent/best.pt", "--data", data, "--imgsz", str(IMGSZ))
    assert missing.returncode == 1 and "/nonexistent/best.pt" in missing.stderr
