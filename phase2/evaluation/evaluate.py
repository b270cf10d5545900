"""The one evaluation protocol every model is measured with.

:func:`evaluate_checkpoint` validates a checkpoint on one split of a dataset under a fixed
:class:`EvalProtocol` (conf, NMS IoU, image size, batch) and writes its metrics and plots;
selection, promotion and the report all compare numbers made by it. Ultralytics is imported
inside functions: call ``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, Field

from phase2.dataset.layout import resolve_split_images
from phase2.infra.files import atomic_write_json, sha256_file


class EvalProtocol(BaseModel):
    split: str = "val"
    imgsz: int
    conf: float = 0.001
    iou: float = 0.7
    batch: int = 16

    def val_arguments(self, data_yaml: Path, save_dir: Path, *, plots: bool = False) -> dict[str, Any]:
        """Ultralytics ``val()`` arguments of this protocol (the one place they are spelled out)."""
        return {
            "data": str(data_yaml),
            **self.model_dump(),
            "plots": plots,
            "save_json": False,
            "project": str(save_dir.parent),
            "name": save_dir.name,
            "exist_ok": True,
            "verbose": False,
        }


# EvalResult field -> the plot Ultralytics' val() writes into its save_dir.
PLOT_FILES = {
    "pr_curve_png": "BoxPR_curve.png",
    "confusion_matrix_png": "confusion_matrix.png",
    "confusion_matrix_normalized_png": "confusion_matrix_normalized.png",
}


class EvalResult(BaseModel):
    weights: Path
    weights_sha256: str
    data_yaml: Path
    protocol: EvalProtocol
    metrics: dict[str, dict[str, Any]] = Field(
        description='{"overall": {precision, recall, mAP50, mAP50-95, fitness}, '
        '"per_class": {name: {precision, recall, AP50, AP50-95, instances}}}; a class without '
        "instances in the split has None for its rates"
    )
    save_dir: Path
    metrics_json: Path
    per_class_csv: Path
    pr_curve_png: Path | None = None
    confusion_matrix_png: Path | None = None
    confusion_matrix_normalized_png: Path | None = None

    def per_class_table(self) -> pd.DataFrame:
        return pd.read_csv(self.per_class_csv)


def _dataset_view(data_yaml: Path, split: str, view: Path) -> Path:
    """A throw-away view of one split: image symlinks and label copies under ``view``.

    Ultralytics writes ``labels.cache`` next to the label files; evaluating through this view
    keeps the user's dataset untouched (and works when it is read-only). Splits given as
    directories or as image-list .txt files (the rebalanced versions) are both resolved the
    way Ultralytics resolves them.
    """
    from ultralytics.data.utils import img2label_paths

    names = yaml.safe_load(Path(data_yaml).read_text()).get("names")
    images = resolve_split_images(data_yaml).get(split)
    if not images:
        raise ValueError(f"{data_yaml}: no '{split}' split; add `{split}: path/to/{split}/images`")
    target = view / split / "images"
    target.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(sorted(images)):
        link = target / f"{i:06d}_{image.name}"  # prefix: lists may hold equal names from two folders
        link.symlink_to(Path(image).resolve())
        label = Path(img2label_paths([str(image)])[0])
        if label.is_file():
            view_label = Path(img2label_paths([str(link)])[0])
            view_label.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(label, view_label)
    view_yaml = view / "data.yaml"
    # Ultralytics requires train and val keys; they point at the evaluated split (unused).
    entries = str(target)
    view_yaml.write_text(
        yaml.safe_dump(
            {"path": str(view), "train": entries, "val": entries, split: entries, "names": names},
            sort_keys=False,
        )
    )
    return view_yaml


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def evaluate_checkpoint(
    weights: Path,
    data_yaml: Path,
    *,
    split: str = "val",
    imgsz: int,
    conf: float = 0.001,
    iou: float = 0.7,
    batch: int = 16,
    device: str | None = None,
    out_dir: Path,
    validator: type | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> EvalResult:
    """Evaluate ``weights`` on one split under the fixed protocol; artifacts go to ``out_dir``.

    Writes ``metrics.json``, ``per_class.csv`` and Ultralytics' plots (PR curve, confusion
    matrix) into ``out_dir``; nothing is written into the dataset. ``validator`` (a
    ``DetectionValidator`` subclass) and ``on_result`` (called with Ultralytics' metrics object)
    let a caller keep more of the same pass, e.g. the per-image match table.
    """
    from ultralytics import YOLO

    from phase2.training.checkpoints import verify_checkpoint

    weights, data_yaml, out_dir = Path(weights).resolve(), Path(data_yaml).resolve(), Path(out_dir).resolve()
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such checkpoint")
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{data_yaml}: no such dataset yaml")
    protocol = EvalProtocol(split=split, imgsz=imgsz, conf=conf, iou=iou, batch=batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(verify_checkpoint(weights)))  # a safe load first: Ultralytics unpickles fully
    with tempfile.TemporaryDirectory(prefix="eval-view-", dir=out_dir) as view:
        view_yaml = _dataset_view(data_yaml, split, Path(view))
        names = yaml.safe_load(view_yaml.read_text())["names"]
        names = list(names.values()) if isinstance(names, dict) else list(names)
        model_names = [model.names[i] for i in sorted(model.names)]
        if model_names != names:
            raise ValueError(
                f"{weights}: model classes {model_names} differ from {data_yaml} names {names}; "
                "evaluate with the dataset the model was trained for"
            )
        extra: dict[str, Any] = {"device": device} if device is not None else {}
        if validator is not None:
            extra["validator"] = validator
        result = model.val(**protocol.val_arguments(view_yaml, out_dir, plots=True), **extra)
    if on_result is not None:
        on_result(result)
    save_dir = Path(result.save_dir)
    box = result.box
    overall = {
        "precision": float(box.mp),
        "recall": float(box.mr),
        "mAP50": float(box.map50),
        "mAP50-95": float(box.map),
        "fitness": float(result.fitness),
    }
    per_class: dict[str, dict[str, Any]] = {}
    measured = {int(c): i for i, c in enumerate(box.ap_class_index)}
    for class_id, name in enumerate(names):
        instances = int(result.nt_per_class[class_id])
        if class_id in measured:
            p, r, ap50, ap = box.class_result(measured[class_id])
        else:
            p = r = ap50 = ap = float("nan")
        per_class[name] = {
            "precision": _none_if_nan(p),
            "recall": _none_if_nan(r),
            "AP50": _none_if_nan(ap50),
            "AP50-95": _none_if_nan(ap),
            "instances": instances,
        }
    metrics = {"overall": overall, "per_class": per_class}
    per_class_csv = save_dir / "per_class.csv"
    pd.DataFrame.from_dict(per_class, orient="index").rename_axis("class").reset_index().to_csv(
        per_class_csv, index=False
    )
    sha = sha256_file(weights)
    metrics_json = atomic_write_json(
        save_dir / "metrics.json",
        {"weights": str(weights), "sha256": sha, "protocol": protocol.model_dump(), **metrics},
    )
    plots = {field: save_dir / name for field, name in PLOT_FILES.items() if (save_dir / name).is_file()}
    return EvalResult(
        weights=weights,
        weights_sha256=sha,
        data_yaml=data_yaml,
        protocol=protocol,
        metrics=metrics,
        save_dir=save_dir,
        metrics_json=metrics_json,
        per_class_csv=per_class_csv,
        **plots,
    )


def dataset_view(data_yaml: Path, split: str, view: Path) -> Path:
    """The read-only-safe view of one split that :func:`evaluate_checkpoint` validates through
    (image symlinks and label copies under ``view``); returns the view's data.yaml."""
    return _dataset_view(data_yaml, split, view)
