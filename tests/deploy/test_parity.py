"""Export parity on real images: numbers re-derived with Ultralytics alone, and a wrong export caught."""

from __future__ import annotations

import shutil

import pytest

from tests.deploy.conftest import IMGSZ, SETTINGS_KW


def _val(model_path, data_yaml, imgsz, tmp_path):
    from ultralytics import YOLO

    result = YOLO(str(model_path), task="detect").val(
        data=str(data_yaml),
        split="test",
        imgsz=imgsz,
        conf=0.001,
        iou=0.7,
        batch=16,
        plots=False,
        project=str(tmp_path),
        name="val",
        exist_ok=True,
        verbose=False,
    )
    return result.box.map50, result.box.map


def test_parity_numbers_rederived_with_ultralytics_val(deployables, tmp_path):
    deploy = deployables["deploy"]
    onnx = deploy.exports["onnx"]
    parity = onnx.parity
    exported = deploy.files[onnx.path]
    assert exported.suffix == ".onnx" and onnx.imgsz == IMGSZ and onnx.opset == 17
    pt50, pt5095 = _val(deployables["weights"], deployables["data"], IMGSZ, tmp_path / "pt")
    onnx50, onnx5095 = _val(exported, deployables["data"], IMGSZ, tmp_path / "onnx")
    assert (parity.map50_pt, parity.map50_95_pt) == pytest.approx((pt50, pt5095), abs=1e-6)
    assert (parity.map50_export, parity.map50_95_export) == pytest.approx((onnx50, onnx5095), abs=1e-6)
    assert parity.delta_map50 == pytest.approx(abs(onnx50 - pt50), abs=1e-9)
    assert parity.n_images == 25 and parity.split == "test"
    assert parity.boxes_pt > 100, "the model must make enough confident boxes for agreement to mean something"
    assert parity.box_agreement >= SETTINGS_KW["tolerance_box_agreement"] and onnx.usable and onnx.reason is None, onnx


def test_export_at_the_wrong_imgsz_is_caught_by_parity(deployables, tmp_path):
    """An ONNX made by Ultralytics' exporter with a static input 32 px too small, registered as if
    it were the protocol's size: only the measurement can catch it."""
    from ultralytics import YOLO

    from phase2.deploy.export import ExportedModel
    from phase2.deploy.package import export_record
    from phase2.deploy.parity import measure_parity
    from phase2.deploy.settings import ExportSettings
    from phase2.evaluation.evaluate import EvalProtocol
    from phase2.evaluation.matches import collect_matches

    weights, data = deployables["weights"], deployables["data"]
    (tmp_path / "wrong").mkdir()
    source = shutil.copy(weights, tmp_path / "wrong" / "best.pt")
    path = YOLO(str(source)).export(
        format="onnx", imgsz=IMGSZ - 32, dynamic=False, simplify=True, opset=17, device="cpu"
    )
    wrong = ExportedModel(format="onnx", path=path, imgsz=IMGSZ, half=False, opset=17)  # claims the right size
    reference = collect_matches(weights, data, EvalProtocol(split="test", imgsz=IMGSZ))
    parity, problems = measure_parity(weights, wrong, data, reference, ExportSettings(**SETTINGS_KW))
    faithful = deployables["deploy"].exports["onnx"].parity.box_agreement
    assert parity.box_agreement is not None and parity.box_agreement < 0.5 <= faithful, (parity, faithful)
    assert any("of the .pt's boxes" in p for p in problems), problems
    record = export_record(wrong, parity, problems)
    assert not record.usable and "of the .pt's boxes" in record.reason
