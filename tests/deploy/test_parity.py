"""Export parity of a model that has learned something (tests/plugins/learned_model.py), on the
real images it learned, where its mAP50 is far from 0, at the default tolerances.

The registration path (selection's saved match table -> prepare_deployables, as
tasks/register.py calls them) exports ONNX, OpenVINO and TorchScript and records their parity; the numbers
are re-derived here with Ultralytics' val() of each file and torchvision's box IoU, and an
export made at the wrong size is reported unusable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from phase2.evaluation.evaluate import EvalProtocol
from tests.plugins.learned_model import LEARNED_IMGSZ

PROTOCOL = EvalProtocol(split="val", imgsz=LEARNED_IMGSZ)  # the images it learned: mAP50 ~0.6
NAME = "learned-detector"


class ValCalls:
    """Records the model file of every Ultralytics ``Model.val`` call (real calls, passed through)."""

    def __init__(self) -> None:
        self.models: list[str] = []

    def install(self, patch: pytest.MonkeyPatch) -> ValCalls:
        from ultralytics.engine.model import Model

        original = Model.val

        def val(model: Any, *args: Any, **kwargs: Any) -> Any:
            self.models.append(str(model.model_name))
            return original(model, *args, **kwargs)

        patch.setattr(Model, "val", val)
        return self

    def of(self, suffix: str) -> int:
        return sum(m.endswith(suffix) for m in self.models)


def _metadata() -> dict[str, Any]:
    return {
        "metrics": {"val": None, "test": None},
        "recipe": {"name": "learned", "train": {"imgsz": LEARNED_IMGSZ}},
        "dataset": {"version_id": "ds-learned", "source_version_id": "src", "uri": None, "manifest_sha256": None},
        "baseline": {"reference": "yolo11n.yaml (from scratch)"},
    }


@pytest.fixture(scope="module")
def learned(learned_model, tmp_path_factory) -> dict[str, Any]:
    """Selection on the learned run (it saves the winner's match table on the gate split, val
    here), then prepare_deployables with that table, ONNX + OpenVINO + TorchScript at the default tolerances."""
    from phase2.deploy.package import prepare_deployables
    from phase2.deploy.settings import ExportSettings
    from phase2.evaluation.selection import SelectionPolicy, select_checkpoint

    weights, data_yaml = learned_model
    root = tmp_path_factory.mktemp("learned-deploy")
    selection = select_checkpoint(
        weights.parent.parent,
        data_yaml,
        SelectionPolicy(),
        imgsz=PROTOCOL.imgsz,
        out_dir=root / "sel",
        gate_split="val",
    )
    assert selection.gate_matches is not None and selection.gate_matches.is_file()
    files = {"weights/best.pt": selection.winner}
    with pytest.MonkeyPatch.context() as patch:
        calls = ValCalls().install(patch)
        deploy = prepare_deployables(
            weights=selection.winner,
            data_yaml=data_yaml,
            protocol=PROTOCOL,
            settings=ExportSettings(formats=["onnx", "openvino", "torchscript"]),
            out_dir=root / "deploy",
            card_inputs={"model_name": NAME, "names": list(selection.val.metrics["per_class"]), **_metadata()},
            files=files,
            saved_matches=selection.gate_matches,
        )
    return {
        "deploy": deploy,
        "weights": selection.winner,
        "data": data_yaml,
        "calls": calls,
        "files": files,
        "saved_matches": selection.gate_matches,
    }


def _val(model_path: Path, data_yaml: Path, save_dir: Path) -> tuple[float, float]:
    """Ultralytics' own val() of one model file under the protocol's arguments."""
    from ultralytics import YOLO

    metrics = YOLO(str(model_path), task="detect").val(**PROTOCOL.val_arguments(data_yaml, save_dir))
    return float(metrics.box.map50), float(metrics.box.map)


def _boxes(model_path: Path, images: list[Path]) -> list[Any]:
    from ultralytics import YOLO

    model = YOLO(str(model_path), task="detect")
    return [model.predict(str(i), imgsz=PROTOCOL.imgsz, conf=0.25, iou=PROTOCOL.iou, verbose=False)[0] for i in images]


def _agreement(pt_results: list[Any], export_results: list[Any]) -> tuple[int, int]:
    """(.pt boxes at conf >= 0.25, how many an export box of the same class covers at IoU >= 0.9),
    with torchvision's box_iou."""
    from torchvision.ops import box_iou

    total = matched = 0
    for ours, theirs in zip(pt_results, export_results, strict=True):
        total += len(ours.boxes)
        if len(ours.boxes) and len(theirs.boxes):
            iou = box_iou(ours.boxes.xyxy.cpu().float(), theirs.boxes.xyxy.cpu().float())
            same = ours.boxes.cls.cpu()[:, None] == theirs.boxes.cls.cpu()[None, :]
            matched += int(((iou >= 0.9) & same).any(dim=1).sum())
    return total, matched


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript"])
def test_recorded_parity_is_rederived_with_ultralytics_val_and_torchvision(learned, fmt, tmp_path):
    from phase2.dataset.layout import resolve_split_images

    deploy = learned["deploy"]
    record = deploy.exports[fmt]
    parity = record.parity
    exported = deploy.files[record.files[0]].parent if fmt == "openvino" else deploy.files[record.path]
    assert record.usable and record.reason is None, record
    assert parity.split == "val" and parity.n_images == 10 and record.imgsz == PROTOCOL.imgsz

    pt50, pt5095 = _val(learned["weights"], learned["data"], tmp_path / "pt")
    ex50, ex5095 = _val(exported, learned["data"], tmp_path / fmt)
    print(f"{fmt}: pt mAP50 {pt50:.4f} mAP50-95 {pt5095:.4f}; export {ex50:.4f} {ex5095:.4f}; recorded {parity}")
    assert pt50 > 0.1 and pt5095 > 0.05, "the model must have learned something, or parity proves nothing"
    assert (parity.map50_pt, parity.map50_95_pt) == pytest.approx((pt50, pt5095), abs=1e-6)
    assert abs(parity.delta_map50 - abs(ex50 - pt50)) <= 1e-3
    assert abs(parity.delta_map50_95 - abs(ex5095 - pt5095)) <= 1e-3
    assert abs(ex50 - pt50) <= 0.005 and abs(ex5095 - pt5095) <= 0.005  # the default tolerance

    images = sorted(resolve_split_images(learned["data"])["val"])
    total, matched = _agreement(_boxes(learned["weights"], images), _boxes(exported, images))
    print(f"{fmt}: boxes {matched}/{total}")
    assert total >= 20, "too few confident boxes for agreement to mean anything"
    assert (parity.boxes_pt, parity.boxes_matched) == (total, matched)
    assert matched / total >= 0.99


def test_the_pt_is_not_evaluated_again_when_selection_saved_its_table(learned):
    deploy, calls = learned["deploy"], learned["calls"]
    assert deploy.reference == f"saved match table {learned['saved_matches']}", deploy.reference
    assert calls.of(".pt") == 0, calls.models  # only the exports were validated
    assert calls.of(".onnx") == calls.of("_openvino_model") == calls.of(".torchscript") == 1, calls.models
    assert deploy.gate is not None and deploy.gate["metrics"]["mAP50"]["value"] == pytest.approx(
        deploy.exports["onnx"].parity.map50_pt
    )


def test_a_table_that_does_not_fit_falls_back_to_a_new_pass(learned, tmp_path):
    """A missing table, or one of other weights, is not trusted: the .pt is validated once."""
    from dataclasses import replace

    from phase2.deploy.package import prepare_deployables
    from phase2.deploy.settings import ExportSettings
    from phase2.evaluation.matches import load_match_table, save_match_table

    saved = learned["saved_matches"]
    stale = save_match_table(replace(load_match_table(saved), weights_sha256="0" * 64), tmp_path / "stale.npz")
    for table in (None, tmp_path / "absent.npz", stale):
        with pytest.MonkeyPatch.context() as patch:
            calls = ValCalls().install(patch)
            deploy = prepare_deployables(
                weights=learned["weights"],
                data_yaml=learned["data"],
                protocol=PROTOCOL,
                settings=ExportSettings(formats=[]),
                out_dir=tmp_path / "deploy",
                card_inputs={"model_name": NAME, "names": load_match_table(saved).names, **_metadata()},
                files=learned["files"],
                saved_matches=table,
            )
        assert deploy.reference == "new validation pass" and calls.of(".pt") == 1, (table, calls.models)
        assert deploy.gate["metrics"]["mAP50"]["value"] == pytest.approx(
            learned["deploy"].gate["metrics"]["mAP50"]["value"]
        )


def test_export_at_the_wrong_imgsz_is_reported_unusable(learned, tmp_path):
    """An ONNX made by Ultralytics' exporter with a static input 32 px too small, registered as if
    it were the protocol's size: only the measurement can catch it, at the default tolerances."""
    from ultralytics import YOLO

    from phase2.deploy.export import ExportedModel
    from phase2.deploy.package import export_record, pt_reference
    from phase2.deploy.parity import measure_parity
    from phase2.deploy.settings import ExportSettings

    weights, data = learned["weights"], learned["data"]
    (tmp_path / "wrong").mkdir()
    source = shutil.copy(weights, tmp_path / "wrong" / "best.pt")
    path = YOLO(str(source)).export(
        format="onnx", imgsz=PROTOCOL.imgsz - 32, dynamic=False, simplify=True, opset=17, device="cpu"
    )
    wrong = ExportedModel(format="onnx", path=path, imgsz=PROTOCOL.imgsz, half=False, opset=17)  # claims 128 px
    reference, _ = pt_reference(weights, data, PROTOCOL, learned["saved_matches"])
    parity, problems = measure_parity(weights, wrong, data, reference, ExportSettings())
    print(parity, problems)
    assert problems, parity
    record = export_record(wrong, parity, problems)
    assert not record.usable and record.reason == "; ".join(problems)
    assert "exceeds the tolerance 0.005" in record.reason or "of the .pt's boxes" in record.reason


def test_openvino_download_from_the_registry_predicts_like_the_export(object_store, learned, tmp_path):
    from typer.testing import CliRunner

    from phase2.cli import app
    from phase2.registry.registry import Registry

    deploy = learned["deploy"]
    Registry(object_store, NAME).register(learned["files"] | deploy.files, _metadata() | {"exports": deploy.exports})
    out = tmp_path / "dl"
    result = CliRunner().invoke(
        app, ["models", "download", f"{NAME}:v1", "--out", str(out), "--format", "openvino", "--json"]
    )
    assert result.exit_code == 0, result.output
    folder = Path(json.loads(result.stdout)["path"])
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert got == sorted([*deploy.exports["openvino"].files, "MODEL_CARD.md", "model_card.json", "manifest.json"])
    assert not any(name.endswith(".pt") for name in got)  # no pickle
    image = sorted((learned["data"].parent / "val" / "images").iterdir())[:2]
    (downloaded,) = _boxes(folder / deploy.exports["openvino"].path, image[:1])
    (made,) = _boxes(deploy.files[deploy.exports["openvino"].files[0]].parent, image[:1])
    assert len(downloaded.boxes) > 0
    assert downloaded.boxes.xyxy.tolist() == made.boxes.xyxy.tolist()


def test_a_missing_export_package_is_one_clear_error_and_nothing_is_installed(deploy_model, tmp_path, monkeypatch):
    """Fake: openvino reported as not installed (uninstalling it for real would break the session)."""
    import importlib.util
    import subprocess

    from phase2.deploy.export import ExportError, export_weights

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real_find_spec(name, *a)
    )

    def no_install(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"something tried to install a package: {args}")

    monkeypatch.setattr(subprocess, "check_output", no_install)
    monkeypatch.setattr(subprocess, "run", no_install)
    with pytest.raises(
        ExportError, match=r"cannot export openvino: the package 'openvino' is not installed.*pip install"
    ):
        export_weights(deploy_model, "openvino", imgsz=PROTOCOL.imgsz, out_dir=tmp_path)
    assert not list(tmp_path.rglob("*openvino*"))
