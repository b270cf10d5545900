"""`phase2 predict` from a registry reference with --format onnx: JSON lines, annotated images,
bad files skipped, and no pickle loaded."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from tests.deploy.conftest import IMGSZ
from tests.deploy.test_registry_exports import NAME, register


def _refuse(*_args, **_kwargs):
    raise AssertionError("a pickle was loaded")


def test_predict_onnx_from_registry_writes_json_lines_and_annotated_images(
    object_store, deployables, tmp_path, monkeypatch
):
    import cv2
    import torch
    from typer.testing import CliRunner

    from phase2.cli import app

    register(object_store, deployables)
    images = tmp_path / "photos"
    test_images = sorted((deployables["data"].parent / "test" / "images").iterdir())[:3]
    (images / "sub").mkdir(parents=True)
    for image in test_images:
        shutil.copy(image, images / "sub" / image.name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "notes.txt").write_text("not an image")
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, _refuse)
    monkeypatch.setattr(torch, "load", _refuse)

    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app, ["predict", f"{NAME}:v1", str(images), "--format", "onnx", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 3 and report["format"] == "onnx" and report["model"].endswith(".onnx")
    assert report["imgsz"] == IMGSZ  # the export's own size (Ultralytics alone would run a dynamic ONNX at 640)
    assert sorted(s["file"].rsplit("/", 1)[-1] for s in report["skipped"]) == ["broken.jpg", "notes.txt"]
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert lines and lines == report["detections"]
    for detection in lines:
        height, width = cv2.imread(detection["file"]).shape[:2]
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height  # original-image pixels, not the 160 px input
        assert detection["class"] in ("rock_toe", "slope_drain", "toe_drain", "vegetation")
        assert 0.25 <= detection["confidence"] <= 1
    from ultralytics import YOLO

    expected = YOLO(report["model"], task="detect").predict([str(p) for p in test_images], imgsz=IMGSZ, conf=0.25)
    assert len(lines) == sum(len(r.boxes) for r in expected)  # Ultralytics' own count for the same export
    annotated = sorted(p.name for p in (out / "annotated").rglob("*.jpg"))
    assert annotated == sorted(p.with_suffix(".jpg").name for p in test_images)


def test_predict_refuses_a_pickle_for_onnx(deployables, tmp_path):
    from phase2.deploy.predict import load_model

    with pytest.raises(ValueError, match="needs an .onnx file"):
        load_model(deployables["weights"], "onnx")


def test_card_onnx_snippet_runs_with_onnxruntime_alone(deployables, tmp_path, monkeypatch):
    deploy = deployables["deploy"]
    card = json.loads(deploy.files["model_card.json"].read_text())
    image = sorted((deployables["data"].parent / "test" / "images").iterdir())[0]
    shutil.copy(image, tmp_path / "photo.jpg")
    shutil.copytree(deploy.files["exports/best.onnx"].parent, tmp_path / "exports", dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(card["how_to_load"]["onnx"], namespace)  # the card's own code, as a reader would run it
    assert namespace["out"].shape[:2] == (1, 4 + 4)
    assert len(namespace["boxes"]) == len(namespace["classes"]) > 0
