"""A model that makes confident, image-dependent boxes without training, real images, and its
deployables (exports with parity, model card) made once for the package.

Models trained for a few epochs in tests only predict whole-image boxes, on which any export
"agrees"; so the model here is an untrained YOLO11n (seed 0) whose stride-8 class logits are
scaled and shifted: its boxes are large and wrong, but they depend on the pixels and on the input
size, which is what export parity has to reproduce. It is evaluated against the real labels.

Its class scores tie (saturated), so NMS picks among equal boxes differently in ONNX Runtime and
PyTorch even though the raw outputs agree to 6e-8 (measured): a faithful export reproduces about
2/3 of its boxes, an export at the wrong size about 1/10. The package's box tolerance is
therefore 0.5 (:data:`SETTINGS`). These fixtures serve the registry, predict and W&B plumbing;
parity itself is tested at the default tolerances on a model that has learned the real images it
is measured on (test_parity.py, tests/plugins/learned_model.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.data import copy_subset

IMGSZ = 160
SETTINGS_KW = {"tolerance_box_agreement": 0.5}
NAMES = ["rock_toe", "slope_drain", "toe_drain", "vegetation"]


def confident_untrained_model(path: Path, imgsz: int = IMGSZ) -> Path:
    """The untrained model described above, saved as an Ultralytics checkpoint (train imgsz set)."""
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    model.model = DetectionModel("yolo11n.yaml", nc=len(NAMES), verbose=False)
    model.model.names = dict(enumerate(NAMES))
    logits = model.model.model[-1].cv3[0][-1]  # the class logits of the stride-8 anchors
    logits.weight.data *= 30
    logits.bias.data += 8
    model.model.args = {"imgsz": imgsz, "task": "detect"}
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


@pytest.fixture(scope="package")
def deploy_data(real_dataset, tmp_path_factory) -> Path:
    """A copy of the real dataset: all 25 test images (the gate split), 2 train, 2 val."""
    root = tmp_path_factory.mktemp("deploy-data") / "site"
    data_yaml = copy_subset(real_dataset, root, {"train": 2, "val": 2, "test": 25})
    shutil.copy(real_dataset / "README.md", root / "README.md")  # its source and licence travel with it
    return data_yaml


@pytest.fixture(scope="package")
def deploy_model(tmp_path_factory) -> Path:
    return confident_untrained_model(tmp_path_factory.mktemp("deploy-model") / "best.pt")


@pytest.fixture(scope="package")
def deployables(deploy_model, deploy_data, tmp_path_factory) -> dict[str, Any]:
    """prepare_deployables as tasks/register.py calls it: ONNX export + parity on test + card."""
    from phase2.deploy.package import prepare_deployables
    from phase2.deploy.settings import ExportSettings
    from phase2.evaluation.evaluate import EvalProtocol

    out = tmp_path_factory.mktemp("deployables")
    results_csv = out / "results.csv"
    results_csv.write_text("epoch,metrics/mAP50(B)\n1,0.0\n")
    files = {"weights/best.pt": deploy_model, "results.csv": results_csv}
    metadata = {
        "metrics": {"val": None, "test": None},
        "recipe": {"name": "deploy-test", "train": {"imgsz": IMGSZ}},
        "dataset": {"version_id": "ds-test", "source_version_id": "src-test", "uri": None, "manifest_sha256": None},
        "baseline": {"reference": "yolo11n.yaml (untrained)"},
    }
    deploy = prepare_deployables(
        weights=deploy_model,
        data_yaml=deploy_data,
        protocol=EvalProtocol(split="test", imgsz=IMGSZ),
        settings=ExportSettings(**SETTINGS_KW),
        out_dir=out / "deploy",
        card_inputs={"model_name": "deploy-test-detector", "names": NAMES, **metadata},
        files=files,
    )
    return {"deploy": deploy, "files": files, "metadata": metadata, "data": deploy_data, "weights": deploy_model}


def names_of(data_yaml: Path) -> list[str]:
    names = yaml.safe_load(data_yaml.read_text())["names"]
    return list(names.values()) if isinstance(names, dict) else list(names)
