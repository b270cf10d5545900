"""Training history, the fixed evaluation protocol and checkpoint selection by an explicit policy.

- :func:`summarize_history` reads any Ultralytics ``results.csv`` (best/worst/mean/last per
  metric, why training stopped).
- :func:`evaluate_checkpoint` is the one evaluation protocol every model is measured with.
- :func:`select_checkpoint` re-evaluates every checkpoint of a run and picks one by a
  :class:`SelectionPolicy`, explaining any gap to the numbers seen during training.

Ultralytics is imported inside functions: call ``tasks.settings.configure_environment()`` first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, Field, model_validator

# results.csv column -> our metric name; higher is better for all of them.
METRIC_COLUMNS = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "mAP50": "metrics/mAP50(B)",
    "mAP50-95": "metrics/mAP50-95(B)",
}
OVERALL_KEYS = ("precision", "recall", "mAP50", "mAP50-95", "fitness")
PER_CLASS_KEYS = ("precision", "recall", "AP50", "AP50-95", "instances")


# --------------------------------------------------------------------------- fitness


def ultralytics_fitness_weights() -> dict[str, float]:
    """Weights the installed Ultralytics gives P, R, mAP50, mAP50-95 in its detection fitness.

    Measured by evaluating ``Metric.fitness`` on unit inputs, so it follows the installed version.
    """
    from ultralytics.utils.metrics import Metric

    weights = {}
    names = list(METRIC_COLUMNS)
    for i, name in enumerate(names):
        probe = Metric()
        unit = [0.0] * len(names)
        unit[i] = 1.0
        probe.mean_results = lambda unit=unit: unit  # fitness() is a weighted sum of mean_results()
        weights[name] = float(probe.fitness())
    return weights


def ultralytics_fitness_formula() -> str:
    """The installed Ultralytics' detection fitness, e.g. ``"mAP50-95"`` or ``"0.1*mAP50 + 0.9*mAP50-95"``."""
    import ultralytics

    terms = [
        name if math.isclose(w, 1.0) else f"{w:g}*{name}"
        for name, w in ultralytics_fitness_weights().items()
        if not math.isclose(w, 0.0, abs_tol=1e-12)
    ]
    return (" + ".join(terms) or "0") + f" (ultralytics {ultralytics.__version__})"


# --------------------------------------------------------------------------- history


class MetricStats(BaseModel):
    """One metric over the epochs of a run. Epochs are 1-based, as in results.csv."""

    best: float
    best_epoch: int
    worst: float
    worst_epoch: int
    mean: float
    last: float
    higher_is_better: bool = True


class HistorySummary(BaseModel):
    source: Path
    epochs_run: int
    planned_epochs: int | None
    patience: int | None
    fitness_formula: str
    best_epoch: int = Field(description="best epoch by fitness: what best.pt and early stopping follow")
    stop_reason: str
    metrics: dict[str, MetricStats]

    def to_markdown(self) -> str:
        lines = [
            f"### Training history: `{self.source}`",
            "",
            f"- epochs run: {self.epochs_run}"
            + (f" of {self.planned_epochs} planned" if self.planned_epochs else ""),
            f"- stop reason: {self.stop_reason}",
            f"- best epoch by fitness ({self.fitness_formula}): {self.best_epoch}",
            "",
            "| metric | best (epoch) | worst (epoch) | mean | last |",
            "|---|---|---|---|---|",
        ]
        for name, s in self.metrics.items():
            lines.append(
                f"| {name} | {s.best:.4f} ({s.best_epoch}) | {s.worst:.4f} ({s.worst_epoch}) "
                f"| {s.mean:.4f} | {s.last:.4f} |"
            )
        return "\n".join(lines) + "\n"


def read_results_csv(results_csv: Path) -> pd.DataFrame:
    """results.csv with stripped column names (some Ultralytics versions pad them with spaces)."""
    results_csv = Path(results_csv)
    if not results_csv.is_file():
        raise FileNotFoundError(f"{results_csv}: no such file (expected an Ultralytics results.csv)")
    table = pd.read_csv(results_csv, skipinitialspace=True)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ["epoch", *METRIC_COLUMNS.values()] if c not in table.columns]
    if missing:
        raise ValueError(
            f"{results_csv}: line 1 (header) lacks column(s) {missing}; found {list(table.columns)}. "
            "Pass the results.csv written by an Ultralytics detection training."
        )
    if table.empty:
        raise ValueError(f"{results_csv}: header only, no epoch rows (did training run a full epoch?)")
    for column in table.columns:
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = table[column].notna() & numeric.isna()
        if bad.any():
            row = int(bad.idxmax())
            raise ValueError(
                f"{results_csv}: line {row + 2}, column {column!r}: {table[column][row]!r} is not a number"
            )
        table[column] = numeric
    table["epoch"] = table["epoch"].astype(int)
    return table


def _loss_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in table.columns if c.startswith(prefix) and c.endswith("_loss")]


def _stats(epochs: pd.Series, values: pd.Series, higher_is_better: bool) -> MetricStats:
    # Ties go to the later epoch, as Ultralytics' best.pt and EarlyStopping do (>=).
    order = values[::-1]
    best_i = order.idxmax() if higher_is_better else order.idxmin()
    worst_i = values.idxmin() if higher_is_better else values.idxmax()
    return MetricStats(
        best=float(values[best_i]),
        best_epoch=int(epochs[best_i]),
        worst=float(values[worst_i]),
        worst_epoch=int(epochs[worst_i]),
        mean=float(values.mean()),
        last=float(values.iloc[-1]),
        higher_is_better=higher_is_better,
    )


def summarize_history(
    results_csv: Path, *, patience: int | None = None, epochs: int | None = None
) -> HistorySummary:
    """Best/worst/mean/last of each metric and why training stopped.

    ``patience``/``epochs`` default to the ``args.yaml`` next to results.csv when present.
    """
    results_csv = Path(results_csv)
    table = read_results_csv(results_csv)
    args_yaml = results_csv.parent / "args.yaml"
    if args_yaml.is_file() and (patience is None or epochs is None):
        args = yaml.safe_load(args_yaml.read_text()) or {}
        patience = args.get("patience") if patience is None else patience
        epochs = args.get("epochs") if epochs is None else epochs

    weights = ultralytics_fitness_weights()
    series = {name: table[column] for name, column in METRIC_COLUMNS.items()}
    series["fitness"] = sum(weights[name] * table[col].fillna(0) for name, col in METRIC_COLUMNS.items())
    metrics = {name: _stats(table["epoch"], values, True) for name, values in series.items()}
    for prefix, name in (("train/", "train_loss"), ("val/", "val_loss")):
        if columns := _loss_columns(table, prefix):
            metrics[name] = _stats(table["epoch"], table[columns].sum(axis=1), False)

    epochs_run = int(table["epoch"].iloc[-1])
    best_epoch = metrics["fitness"].best_epoch
    stop_reason = _stop_reason(epochs_run, best_epoch, patience, epochs)
    return HistorySummary(
        source=results_csv,
        epochs_run=epochs_run,
        planned_epochs=epochs,
        patience=patience,
        fitness_formula=ultralytics_fitness_formula(),
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        metrics=metrics,
    )


def _stop_reason(epochs_run: int, best_epoch: int, patience: int | None, planned: int | None) -> str:
    early = patience is not None and epochs_run == best_epoch + patience
    if early and (planned is None or epochs_run < planned):
        return f"patience {patience} after epoch {best_epoch}"
    if planned is None or epochs_run >= planned:
        return f"epochs reached ({epochs_run})"
    # Neither rule explains it: a time limit, an interruption, or a run still in progress.
    return (
        f"stopped at epoch {epochs_run} of {planned} without reaching patience "
        f"(best epoch {best_epoch}, patience {patience}): time limit, interruption or still running"
    )


# --------------------------------------------------------------------------- evaluation


class EvalProtocol(BaseModel):
    split: str = "val"
    imgsz: int
    conf: float = 0.001
    iou: float = 0.7
    batch: int = 16


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
    pr_curve_png: Path | None
    confusion_matrix_png: Path | None
    confusion_matrix_normalized_png: Path | None

    def per_class_table(self) -> pd.DataFrame:
        return pd.read_csv(self.per_class_csv)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _split_image_dirs(data_yaml: Path, split: str) -> tuple[dict, list[Path]]:
    """Dataset dict as Ultralytics resolves it, and the image directories of ``split``."""
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    if not data.get(split):
        raise ValueError(f"{data_yaml}: no '{split}' split; add `{split}: path/to/{split}/images`")
    sources = data[split] if isinstance(data[split], list) else [data[split]]
    dirs = [Path(s) for s in sources]
    for d in dirs:
        if not d.is_dir():
            raise ValueError(
                f"{data_yaml}: split '{split}' points to {d}, which is not a directory of images "
                "(image-list .txt files are not supported by the evaluation protocol)"
            )
    return data, dirs


def _dataset_view(data_yaml: Path, split: str, view: Path) -> Path:
    """A throw-away view of one split: image symlinks and label copies under ``view``.

    Ultralytics writes ``labels.cache`` next to the label files; evaluating through this view
    keeps the user's dataset untouched (and works when it is read-only).
    """
    from ultralytics.data.utils import IMG_FORMATS, img2label_paths

    data, image_dirs = _split_image_dirs(data_yaml, split)
    split_dirs = []
    for i, image_dir in enumerate(image_dirs):
        target = view / split / str(i) / "images"
        for image in sorted(image_dir.rglob("*")):
            if image.suffix[1:].lower() not in IMG_FORMATS:
                continue
            link = target / image.relative_to(image_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(image.resolve())
            label = Path(img2label_paths([str(image)])[0])
            if label.is_file():
                view_label = Path(img2label_paths([str(link)])[0])
                view_label.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(label, view_label)
        split_dirs.append(str(target))
    view_yaml = view / "data.yaml"
    # Ultralytics requires train and val keys; they point at the evaluated split (unused).
    entries = split_dirs if len(split_dirs) > 1 else split_dirs[0]
    view_yaml.write_text(
        yaml.safe_dump(
            {"path": str(view), "train": entries, "val": entries, split: entries, "names": data["names"]},
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
) -> EvalResult:
    """Evaluate ``weights`` on one split under the fixed protocol; artifacts go to ``out_dir``.

    Writes ``metrics.json``, ``per_class.csv`` and Ultralytics' plots (PR curve, confusion
    matrix) into ``out_dir``; nothing is written into the dataset.
    """
    from ultralytics import YOLO

    weights, data_yaml, out_dir = Path(weights).resolve(), Path(data_yaml).resolve(), Path(out_dir).resolve()
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such checkpoint")
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{data_yaml}: no such dataset yaml")
    protocol = EvalProtocol(split=split, imgsz=imgsz, conf=conf, iou=iou, batch=batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(weights))
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
        extra = {"device": device} if device is not None else {}
        result = model.val(
            data=str(view_yaml),
            split=split,
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            batch=batch,
            plots=True,
            save_json=False,
            project=str(out_dir.parent),
            name=out_dir.name,
            exist_ok=True,
            verbose=False,
            **extra,
        )
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
    metrics_json = save_dir / "metrics.json"
    sha = sha256_file(weights)
    metrics_json.write_text(
        json.dumps({"weights": str(weights), "sha256": sha, "protocol": protocol.model_dump(), **metrics}, indent=2)
    )

    def existing(name: str) -> Path | None:
        return save_dir / name if (save_dir / name).is_file() else None

    return EvalResult(
        weights=weights,
        weights_sha256=sha,
        data_yaml=data_yaml,
        protocol=protocol,
        metrics=metrics,
        save_dir=save_dir,
        metrics_json=metrics_json,
        per_class_csv=per_class_csv,
        pr_curve_png=existing("BoxPR_curve.png"),
        confusion_matrix_png=existing("confusion_matrix.png"),
        confusion_matrix_normalized_png=existing("confusion_matrix_normalized.png"),
    )
