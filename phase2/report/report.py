"""The review report of one pipeline run: a self-contained HTML file and a W&B Report spec.

Everything is read from the files the pipeline already wrote under ``<state>/pipeline/<run_key>/``
(validation/, dataset/, train/, selection/, production-eval/) plus ``report/``, which
:func:`prepare_report_inputs` fills with what only this step produces (baseline evaluation,
detection tiles, the promotion decision, task timings). :func:`build_html_report` tolerates any
missing part: the section then says what is missing.

Ultralytics is imported inside functions: call ``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import base64
import io
import json
import math
import mimetypes
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel

from phase2.infra.settings import MINORITY_CLASS, state_dir

REPORT_DIR = "report"
PER_CLASS_KEYS = ("precision", "recall", "AP50", "AP50-95")
MODEL_COLUMNS = ("new", "baseline", "production")
# results.csv columns drawn per chart: (title, [(column, label)]).
CURVES = [
    ("box loss", [("train/box_loss", "train"), ("val/box_loss", "val")]),
    ("cls loss", [("train/cls_loss", "train"), ("val/cls_loss", "val")]),
    ("dfl loss", [("train/dfl_loss", "train"), ("val/dfl_loss", "val")]),
    ("precision", [("metrics/precision(B)", "P")]),
    ("recall", [("metrics/recall(B)", "R")]),
    ("mAP50", [("metrics/mAP50(B)", "mAP50")]),
    ("mAP50-95", [("metrics/mAP50-95(B)", "mAP50-95")]),
    ("learning rate", [("lr/pg0", "pg0 (bias)"), ("lr/pg1", "pg1 (weights)"), ("lr/pg2", "pg2 (bn)")]),
]
# W&B keys the steps log (tasks/steps.py) and the report's own.
WANDB_EPOCH_METRICS = {
    "Losses": ["train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss", "val/dfl_loss"],
    "Precision and recall": ["metrics/precision", "metrics/recall"],
    "mAP": ["metrics/mAP50", "metrics/mAP50-95"],
    "Learning rate": ["lr/pg0", "lr/pg1", "lr/pg2"],
}
WANDB_IMAGES = {
    "Dataset": ["validation/class_counts", "dataset/balance"],
    "Evaluation": ["selection/pr_curve", "selection/confusion_matrix"],
    "Detections (ground truth green, predictions red)": ["report/detections"],
}
WANDB_TABLES = {
    "Dataset": ["dataset/balance_table"],
    "Selection": ["selection/candidates", "selection/per_class_val"],
    "Per class: new vs baseline vs production": ["report/per_class_comparison"],
    "Promotion": ["promotion/comparison"],
    "Timings": ["report/timings"],
}


class ReportError(RuntimeError):
    """A report that cannot be found or built (the message says why and what to do)."""


# --------------------------------------------------------------------------- inputs


class TaskTiming(BaseModel):
    task: str
    state: str
    start: str | None
    end: str | None
    duration_s: float | None


def task_timings(flow_run_id: str) -> list[TaskTiming]:
    """Start, end and duration of every task run of a flow run, from the Prefect API, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    timings = []
    for run in sorted(runs, key=lambda r: (r.start_time is None, r.start_time or r.expected_start_time)):
        duration = (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else None
        timings.append(
            TaskTiming(
                task=run.name,
                state=run.state.type.value if run.state else "UNKNOWN",
                start=run.start_time.isoformat(timespec="seconds") if run.start_time else None,
                end=run.end_time.isoformat(timespec="seconds") if run.end_time else None,
                duration_s=round(duration, 1) if duration is not None else None,
            )
        )
    return timings


def _val_images(data_yaml: Path) -> list[Path]:
    from phase2.dataset.validation import resolve_split_images

    return sorted(resolve_split_images(Path(data_yaml)).get("val", []), key=lambda p: p.name)


def _label_rows(image: Path) -> list[tuple[int, float, float, float, float]]:
    from ultralytics.data.utils import img2label_paths

    label = Path(img2label_paths([str(image)])[0])
    if not label.is_file():
        return []
    rows = []
    for line in label.read_text().splitlines():
        fields = line.split()
        if len(fields) == 5:
            rows.append((int(fields[0]), *map(float, fields[1:])))
    return rows


def render_detections(
    weights: Path,
    data_yaml: Path,
    out_dir: Path,
    *,
    imgsz: int,
    conf: float = 0.25,
    max_images: int = 12,
    tile_width: int = 480,
) -> Path:
    """Val images with ground-truth (green) and predicted (red) boxes, minority-class images first.

    Writes ``NN_<name>.jpg`` tiles and ``detections.json`` (one record per tile) into ``out_dir``;
    returns the JSON path. Predictions use ``imgsz`` and ``conf``.
    """
    from PIL import Image, ImageDraw
    from ultralytics import YOLO

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model = YOLO(str(weights))
    names = [model.names[i] for i in sorted(model.names)]
    minority = names.index(MINORITY_CLASS) if MINORITY_CLASS in names else None
    labelled = [(image, _label_rows(image)) for image in _val_images(data_yaml)]
    labelled.sort(key=lambda item: (not any(row[0] == minority for row in item[1]), item[0].name))
    records = []
    for index, (image, truth) in enumerate(labelled[:max_images]):
        result = model.predict(str(image), imgsz=imgsz, conf=conf, verbose=False)[0]
        with Image.open(image) as source:
            tile = source.convert("RGB")
        scale = tile_width / tile.width
        tile = tile.resize((tile_width, max(1, round(tile.height * scale))))
        draw = ImageDraw.Draw(tile)
        for class_id, cx, cy, w, h in truth:
            box = (
                (cx - w / 2) * tile.width,
                (cy - h / 2) * tile.height,
                (cx + w / 2) * tile.width,
                (cy + h / 2) * tile.height,
            )
            draw.rectangle(box, outline=(0, 200, 0), width=2)
            draw.text(
                (box[0] + 2, box[1] + 1), names[class_id] if class_id < len(names) else str(class_id), fill=(0, 200, 0)
            )
        predictions = []
        for xyxy, class_id, score in zip(
            result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), result.boxes.conf.tolist()
        ):
            box = [v * scale for v in xyxy]
            draw.rectangle(box, outline=(230, 30, 30), width=2)
            draw.text((box[0] + 2, box[3] - 11), f"{names[int(class_id)]} {score:.2f}", fill=(230, 30, 30))
            predictions.append({"class": names[int(class_id)], "conf": round(float(score), 3)})
        tile_path = out_dir / f"{index:02d}_{image.stem}.jpg"
        tile.save(tile_path, quality=85)
        records.append(
            {
                "tile": tile_path.name,
                "image": str(image),
                "ground_truth": [names[r[0]] if r[0] < len(names) else str(r[0]) for r in truth],
                "predictions": predictions,
            }
        )
    if records:
        _montage([out_dir / r["tile"] for r in records], out_dir / "grid.jpg")
    manifest = out_dir / "detections.json"
    manifest.write_text(json.dumps({"conf": conf, "imgsz": imgsz, "weights": str(weights), "tiles": records}, indent=2))
    return manifest


def _montage(tiles: list[Path], out: Path, columns: int = 4) -> None:
    """All tiles in one image (W&B shows one image per key)."""
    from PIL import Image

    images = [Image.open(t) for t in tiles]
    width, height = images[0].width, max(i.height for i in images)
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (width * min(columns, len(images)), height * rows), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
        image.close()
    grid.save(out, quality=85)


def prepare_report_inputs(
    work_dir: Path,
    *,
    data_yaml: Path,
    winner_weights: Path,
    imgsz: int,
    baseline_reference: str,
    baseline_weights: Path | None,
    promotion: dict[str, Any] | None,
    timings: list[TaskTiming] | None,
) -> Path:
    """Write what only the report step knows into ``work_dir/report/``; returns that directory.

    - ``baseline-eval/``: the baseline evaluated under the selection protocol (val split of the
      trained dataset version) when it is a ``.pt`` checkpoint; ``baseline.json`` says what was done.
    - ``detections/``: see :func:`render_detections`.
    - ``promotion.json``, ``timings.json``.
    """
    from phase2.evaluation.selection import evaluate_checkpoint

    report_dir = Path(work_dir) / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    baseline: dict[str, Any] = {"reference": baseline_reference}
    if baseline_weights is None or Path(baseline_weights).suffix != ".pt":
        baseline["status"] = "not evaluated: the baseline is not a .pt checkpoint (training started from scratch)"
    else:
        try:
            evaluated = evaluate_checkpoint(
                Path(baseline_weights), data_yaml, split="val", imgsz=imgsz, out_dir=report_dir / "baseline-eval"
            )
            baseline.update(status="evaluated", weights=str(evaluated.weights), sha256=evaluated.weights_sha256)
        except ValueError as error:  # e.g. a baseline with other classes: not comparable
            baseline["status"] = f"not evaluated: {error}"
    _write_json(report_dir / "baseline.json", baseline)
    render_detections(winner_weights, data_yaml, report_dir / "detections", imgsz=imgsz)
    if promotion is not None:
        _write_json(report_dir / "promotion.json", promotion)
    if timings is not None:
        _write_json(report_dir / "timings.json", [t.model_dump() for t in timings])
    return report_dir


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- tables


def winner_stem(work_dir: Path) -> str | None:
    """The selected candidate's evaluation folder name (``best`` for best.pt), from candidates.csv."""
    candidates_csv = Path(work_dir) / "selection" / "candidates.csv"
    if not candidates_csv.is_file():
        return None
    table = pd.read_csv(candidates_csv)
    selected = table[table["selected"].astype(str) == "True"]
    return Path(str(selected["candidate"].iloc[0])).stem if not selected.empty else None


def model_metrics(work_dir: Path, registry_version: dict[str, Any] | None) -> dict[str, dict | None]:
    """Val metrics (overall + per class) of the new model, the baseline and production.

    The new model's numbers are the registry version's own (what was registered), else the
    selection's evaluation of the winner.
    """
    work_dir = Path(work_dir)
    new = ((registry_version or {}).get("metrics") or {}).get("val")
    if new is None and (stem := winner_stem(work_dir)):
        new = _read_json(work_dir / "selection" / "val" / stem / "metrics.json")
    return {
        "new": new,
        "baseline": _read_json(work_dir / REPORT_DIR / "baseline-eval" / "metrics.json"),
        "production": _read_json(work_dir / "production-eval" / "metrics.json"),
    }


def per_class_comparison(metrics: dict[str, dict | None]) -> pd.DataFrame:
    """One row per class (and ``all``): P, R, AP50, AP50-95 of each model side by side."""
    classes = list(dict.fromkeys(c for m in metrics.values() if m for c in (m.get("per_class") or {})))
    rows = []
    for name in [*classes, "all"]:
        row: dict[str, Any] = {"class": name}
        for model, values in metrics.items():
            for key in PER_CLASS_KEYS:
                if values is None:
                    value = None
                elif name == "all":
                    overall = values.get("overall") or {}
                    value = overall.get({"AP50": "mAP50", "AP50-95": "mAP50-95"}.get(key, key))
                else:
                    value = (values.get("per_class") or {}).get(name, {}).get(key)
                row[f"{model}/{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def report_tables(work_dir: Path, registry_version: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """The key tables as rows (Prefect table artifacts, W&B tables): per-class comparison, timings."""
    comparison = per_class_comparison(model_metrics(work_dir, registry_version))
    return {
        "per-class-comparison": _records(comparison),
        "timings": _read_json(Path(work_dir) / REPORT_DIR / "timings.json") or [],
    }


def wandb_images(work_dir: Path) -> dict[str, Path]:
    grid = Path(work_dir) / REPORT_DIR / "detections" / "grid.jpg"
    return {"report/detections": grid} if grid.is_file() else {}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(frame: pd.DataFrame, columns: list[str] | None = None) -> dict[str, Any]:
    columns = [c for c in (columns or list(frame.columns)) if c in frame.columns]
    rows = [[_fmt(None if pd.isna(v) else v) for v in row] for row in frame[columns].itertuples(index=False)]
    return {"columns": columns, "rows": rows}


# --------------------------------------------------------------------------- charts


def _data_uri(path_or_bytes: Path | bytes, mime: str | None = None) -> str:
    if isinstance(path_or_bytes, Path):
        mime = mime or mimetypes.guess_type(path_or_bytes.name)[0] or "application/octet-stream"
        data = path_or_bytes.read_bytes()
    else:
        data = path_or_bytes
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def training_curves_png(results: pd.DataFrame, best_epoch: int | None, stop_reason: str) -> bytes:
    """Per-epoch losses, P, R, mAP50, mAP50-95 and learning rates; best epoch and stop reason marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (title, series) in zip(axes.flat, CURVES):
        for column, label in series:
            if column in results:
                ax.plot(results["epoch"], results[column], marker="o", markersize=3, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    last = int(results["epoch"].iloc[-1])
    for ax in axes.flat:
        ax.axvline(last, color="tab:red", linestyle=":", linewidth=1)
    fig.suptitle(f"Training per epoch: best epoch {best_epoch}; stopped at epoch {last}: {stop_reason}")
    fig.tight_layout()
    return _png(fig)


def timings_png(timings: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in timings if t.get("duration_s") is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1))
    ax.barh([t["task"] for t in shown][::-1], [t["duration_s"] for t in shown][::-1], color="tab:blue")
    ax.set_xlabel("seconds")
    ax.set_title("Task run durations")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- HTML


def _image(title: str, source: Path | bytes, mime: str | None = None) -> dict[str, str]:
    return {"title": title, "src": _data_uri(source, mime)}


def _dataset_section(work_dir: Path) -> dict[str, Any]:
    section: dict[str, Any] = {"missing": [], "images": []}
    report = _read_json(work_dir / "validation" / "report.json")
    if report is None:
        section["missing"].append("validation/report.json")
    else:
        counts = Counter((f["code"], f["severity"]) for f in report["findings"])
        examples = {}
        for finding in report["findings"]:
            examples.setdefault(finding["code"], finding["message"])
        section["findings"] = _table(
            pd.DataFrame(
                [
                    {"code": code, "severity": severity, "count": n, "example": examples[code]}
                    for (code, severity), n in sorted(counts.items())
                ],
                columns=["code", "severity", "count", "example"],
            )
        )
        section["errors"] = sum(n for (_, s), n in counts.items() if s == "error")
        section["warnings"] = sum(n for (_, s), n in counts.items() if s == "warning")
        section["splits"] = _table(pd.DataFrame(report["splits"]))
        groups = report.get("duplicate_groups", [])
        section["duplicate_groups"] = len(groups)
        section["cross_split_groups"] = _table(
            pd.DataFrame(
                [
                    {
                        "kind": g["kind"],
                        "images": len(g["members"]),
                        "splits": ", ".join(sorted({m["split"] for m in g["members"]})),
                        "members": ", ".join(Path(m["image"]).name for m in g["members"]),
                    }
                    for g in groups
                    if g["cross_split"]
                ],
                columns=["kind", "images", "splits", "members"],
            )
        )
        section["recommended_imgsz"] = report.get("recommended_imgsz")
    manifest = _read_json(work_dir / "dataset" / "manifest.json")
    if manifest is None:
        section["missing"].append("dataset/manifest.json (rebalancing off or not run)")
    else:
        section["version_id"] = manifest["version_id"]
        section["repaired_leaks"] = _table(
            pd.DataFrame(
                [
                    {
                        "group": leak["group_id"],
                        "kept in": leak["kept_split"],
                        "moved": ", ".join(f"{Path(m['image']).name} ({m['split']})" for m in leak["members"]),
                    }
                    for leak in manifest["repaired_leaks"]
                ],
                columns=["group", "kept in", "moved"],
            )
        )
        section["moved_groups"] = _table(
            pd.DataFrame(
                [
                    {
                        "group": g["group_id"],
                        "from": g["from_split"],
                        "to": g["to_split"],
                        "images": len(g["images"]),
                        "instances": ", ".join(f"{k}: {v}" for k, v in g["instances"].items() if v),
                    }
                    for g in manifest["moved_groups"]
                ],
                columns=["group", "from", "to", "images", "instances"],
            )
        )
    balance_csv = work_dir / "dataset" / "balance.csv"
    if balance_csv.is_file():
        balance = pd.read_csv(balance_csv)
        section["balance"] = _table(balance)
        balance_png = work_dir / "dataset" / "balance.png"  # drawn by the rebalance step
        if balance_png.is_file():
            section["images"].append(_image("Class counts per split, before and after rebalancing", balance_png))
        else:
            section["missing"].append("dataset/balance.png")
    else:
        section["missing"].append("dataset/balance.csv")
    if (work_dir / "validation" / "class_counts.png").is_file():
        section["images"].append(
            _image("Instances per class and split (source dataset)", work_dir / "validation" / "class_counts.png")
        )
    return section


def _training_section(work_dir: Path) -> dict[str, Any]:
    from phase2.evaluation.selection import read_results_csv, summarize_history

    results_csv = work_dir / "train" / "results.csv"
    if not results_csv.is_file():
        return {"missing": ["train/results.csv"]}
    history = summarize_history(results_csv)
    results = read_results_csv(results_csv)
    args = (
        yaml.safe_load((work_dir / "train" / "args.yaml").read_text())
        if (work_dir / "train" / "args.yaml").is_file()
        else {}
    )
    shown_args = {
        k: args.get(k)
        for k in (
            "model",
            "epochs",
            "patience",
            "imgsz",
            "batch",
            "optimizer",
            "lr0",
            "lrf",
            "warmup_epochs",
            "mosaic",
            "close_mosaic",
            "conf",
        )
        if k in args
    }
    return {
        "missing": [],
        "best_epoch": history.best_epoch,
        "epochs_run": history.epochs_run,
        "planned": history.planned_epochs,
        "stop_reason": history.stop_reason,
        "fitness": history.fitness_formula,
        "args": shown_args,
        "images": [
            _image(
                "Training curves per epoch",
                training_curves_png(results, history.best_epoch, history.stop_reason),
                "image/png",
            )
        ],
    }


def _selection_section(work_dir: Path) -> dict[str, Any]:
    selection = work_dir / "selection"
    if not (selection / "candidates.csv").is_file():
        return {"missing": ["selection/candidates.csv"]}
    candidates = pd.read_csv(selection / "candidates.csv")
    summary = (selection / "selection.md").read_text() if (selection / "selection.md").is_file() else ""
    lines = summary.splitlines()
    policy = next((l.removeprefix("- policy: ") for l in lines if l.startswith("- policy: ")), "")
    protocol = next((l.removeprefix("- protocol: ") for l in lines if l.startswith("- protocol: ")), "")
    explanation = (
        lines[lines.index("### Training-time vs re-evaluation") + 2 :]
        if "### Training-time vs re-evaluation" in lines
        else []
    )
    stem = winner_stem(work_dir)
    images = []
    for split in ("val", "test"):
        folder = selection / split / (stem or "")
        for file, title in (
            ("BoxPR_curve.png", "PR curve"),
            ("confusion_matrix.png", "Confusion matrix"),
            ("confusion_matrix_normalized.png", "Confusion matrix (normalized)"),
        ):
            if stem and (folder / file).is_file():
                images.append(_image(f"{title}, {split} split", folder / file))
    return {
        "missing": [],
        "winner": stem,
        "policy": policy,
        "protocol": protocol,
        "explanation": [l.removeprefix("- ") for l in explanation if l.strip()],
        "candidates": _table(
            candidates,
            [
                "candidate",
                "selected",
                "epoch",
                "precision",
                "recall",
                "mAP50",
                "mAP50-95",
                "fitness",
                "meets_floors",
                "duplicates",
                *[c for c in candidates.columns if c.startswith(f"{MINORITY_CLASS}/")],
            ],
        ),
        "images": images,
    }


def _detections_section(work_dir: Path) -> dict[str, Any]:
    folder = work_dir / REPORT_DIR / "detections"
    manifest = _read_json(folder / "detections.json")
    if manifest is None:
        return {"missing": ["report/detections/detections.json"], "tiles": []}
    tiles = []
    for record in manifest["tiles"]:
        predicted = ", ".join(f"{p['class']} {p['conf']:.2f}" for p in record["predictions"]) or "none"
        tiles.append(
            {
                **_image(Path(record["image"]).name, folder / record["tile"]),
                "truth": ", ".join(record["ground_truth"]) or "background",
                "predicted": predicted,
                "minority": MINORITY_CLASS in record["ground_truth"],
            }
        )
    return {"missing": [], "tiles": tiles, "conf": manifest["conf"], "imgsz": manifest["imgsz"]}


def build_html_report(
    work_dir: Path, out: Path, *, registry_version: dict[str, Any] | None = None, links: dict[str, str] | None = None
) -> Path:
    """Write the review report of the run in ``work_dir`` to ``out`` (one HTML file, images inlined).

    ``registry_version``: the registered version's manifest (``ModelVersion.model_dump()``); its
    val metrics are the new model's numbers. ``links``: label → URL shown in the header (S3 copy,
    W&B run, W&B report). Returns ``out``.
    """
    from jinja2 import Environment

    work_dir, out = Path(work_dir), Path(out)
    if not work_dir.is_dir():
        raise ReportError(f"{work_dir}: no such run directory; pass <state>/pipeline/<run_key>")
    metrics = model_metrics(work_dir, registry_version)
    comparison = per_class_comparison(metrics)
    promotion = _read_json(work_dir / REPORT_DIR / "promotion.json")
    timings = _read_json(work_dir / REPORT_DIR / "timings.json") or []
    baseline = _read_json(work_dir / REPORT_DIR / "baseline.json") or {}
    version = registry_version or {}
    context = {
        "run_key": work_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_ref": f"{version['name']}:v{version['version']}" if version else None,
        "dataset_version": (version.get("dataset") or {}).get("version_id"),
        "links": links or {},
        "dataset": _dataset_section(work_dir),
        "training": _training_section(work_dir),
        "selection": _selection_section(work_dir),
        "comparison": {
            "classes": comparison["class"].tolist(),
            "models": [m for m in MODEL_COLUMNS],
            "available": {m: metrics[m] is not None for m in MODEL_COLUMNS},
            "metric_keys": PER_CLASS_KEYS,
            "cells": {
                (row["class"], m, k): row[f"{m}/{k}"]
                for _, row in comparison.iterrows()
                for m in MODEL_COLUMNS
                for k in PER_CLASS_KEYS
            },
            "baseline": baseline,
            "production_version": (promotion or {}).get("production_version"),
        },
        "detections": _detections_section(work_dir),
        "promotion": promotion,
        "timings": timings,
        "timings_chart": _image("Task run durations", timings_png(timings), "image/png")
        if any(t.get("duration_s") is not None for t in timings)
        else None,
        "fmt": _fmt,
        "value_attr": _value_attr,
        "minority": MINORITY_CLASS,
    }
    html = Environment(autoescape=True).from_string(TEMPLATE).render(**context)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html)
    tmp.replace(out)
    return out


def _value_attr(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


# --------------------------------------------------------------------------- W&B Report


def wandb_report_spec(
    *, entity: str, project: str, run_id: str, title: str, description: str = "", html_link: str | None = None
):
    """The W&B Report of one pipeline run: its per-epoch line plots, the images and tables the
    steps logged, restricted to that run. Built without network; :func:`publish_wandb_report` saves it.
    """
    import wandb_workspaces.reports.v2 as wr

    def runset() -> wr.Runset:
        return wr.Runset(entity=entity, project=project, name=f"run {run_id}", filters=f"ID = '{run_id}'")

    def grid(panels: list) -> wr.PanelGrid:
        return wr.PanelGrid(runsets=[runset()], panels=panels)

    intro = [description] if description else []
    if html_link:
        intro.append(f"Offline HTML report (images embedded): {html_link}")
    blocks: list = [wr.P(text) for text in intro]
    blocks += [
        wr.H2("Training curves per epoch"),
        grid([wr.LinePlot(title=name, x="epoch", y=keys) for name, keys in WANDB_EPOCH_METRICS.items()]),
    ]
    for name, keys in WANDB_IMAGES.items():
        blocks += [wr.H2(name), grid([wr.MediaBrowser(title=key, media_keys=[key], num_columns=1) for key in keys])]
    for name, keys in WANDB_TABLES.items():
        blocks += [wr.H2(f"{name} (tables)"), grid([wr.WeavePanelSummaryTable(table_name=key) for key in keys])]
    return wr.Report(entity=entity, project=project, title=title[:128], description=description, blocks=blocks)


def publish_wandb_report(report) -> str:
    """Save the report to W&B (online only); returns its URL."""
    report.save()
    return report.url


def link_report_to_artifact(artifact_path: str, report_url: str) -> None:
    """Record the W&B report URL in the registered model artifact's metadata (online only)."""
    import wandb

    artifact = wandb.Api().artifact(artifact_path)
    artifact.metadata = {**artifact.metadata, "wandb_report": report_url}
    artifact.save()


# --------------------------------------------------------------------------- past runs


def run_key_for(run: str, state: Path | None = None) -> str:
    """The run key of RUN: a run key (a folder under <state>/pipeline) or a Prefect flow run id."""
    pipeline = Path(state or state_dir()) / "pipeline"
    summary_file = pipeline / "flow-runs" / f"{run}.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        return str(summary["s3_prefix"]).rstrip("/").rsplit("/", 1)[-1]
    if (pipeline / run).is_dir() and run != "flow-runs":
        return run
    raise ReportError(
        f"{run!r}: neither a run key in {pipeline} nor a flow run id with a summary in "
        f"{pipeline / 'flow-runs'}; pass the run key printed by `phase2 run` or the flow run id"
    )


def _exists(store, key: str) -> bool:
    from phase2.registry.storage import StorageError

    try:
        return store.exists(key)
    except StorageError:  # S3 not reachable: fall back to the local files
        return False


def report_for_run(run: str, *, rebuild: bool = False, store=None, registry_version: dict | None = None) -> Path:
    """The HTML report of a past run: the local copy, else the one stored in S3 with the run
    (``runs/<key>/report/report.html``), else built from the run's files. Returns its path."""
    key = run_key_for(run)
    work_dir = state_dir() / "pipeline" / key
    html = work_dir / REPORT_DIR / "report.html"
    if html.is_file() and not rebuild:
        return html
    stored = f"runs/{key}/{REPORT_DIR}/report.html"
    if store is not None and not rebuild and _exists(store, stored):
        return store.get_file(stored, html)
    if not work_dir.is_dir():
        raise ReportError(f"run {key}: no report in S3 and no run files in {work_dir} to build one from")
    summary = _read_json(work_dir / "summary.json") or {}
    if registry_version is None and store is not None and summary.get("model"):
        from phase2.registry.registry import Registry

        name = summary["model"].split(":", 1)[0]
        registry_version = Registry(store, name).get(summary["model"]).model_dump(mode="json")
    return build_html_report(work_dir, html, registry_version=registry_version)


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Phase 2 run {{ run_key }}{% if model_ref %}: {{ model_ref }}{% endif %}</title>
<style>
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:0 auto;max-width:1280px;padding:1em 2em;color:#222}
h1{font-size:1.6em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em;display:block;overflow-x:auto;max-width:100%} th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} .missing{color:#a60;font-style:italic}
figure{margin:.8em 0} figure img{max-width:100%;border:1px solid #ddd} figcaption{font-size:.85em;color:#555;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.grid figure{margin:0} .minority{outline:3px solid #e69500}
.decision{font-size:1.2em;font-weight:bold;padding:.4em .8em;display:inline-block;border-radius:4px}
.promote{background:#d9f2d9} .keep{background:#f9e0d9} .pass{color:#070} .FAIL{color:#b00;font-weight:bold}
nav a{margin-right:1em}
</style></head><body>
<h1>Phase 2 review report: run <code>{{ run_key }}</code></h1>
<p>Model version: <b>{{ model_ref or "not registered" }}</b>{% if dataset_version %}; dataset version
<code>{{ dataset_version[:16] }}</code>{% endif %}; built {{ created }}.</p>
{% if links %}<ul id="links">{% for label, url in links.items() %}<li>{{ label }}: <a href="{{ url }}">{{ url }}</a></li>{% endfor %}</ul>{% endif %}
<nav><a href="#promotion">Promotion</a><a href="#dataset">Dataset</a><a href="#training">Training</a>
<a href="#selection">Selection</a><a href="#per-class">Per class</a><a href="#plots">PR / confusion</a>
<a href="#detections">Detections</a><a href="#timings">Timings</a></nav>

{% macro table(t, id=None) -%}
{% if t and t.rows %}<table{% if id %} id="{{ id }}"{% endif %}><thead><tr>{% for c in t.columns %}<th class="l">{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for v in row %}<td class="l">{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% else %}<p class="missing">none</p>{% endif %}
{%- endmacro %}
{% macro figures(images) -%}
{% for im in images %}<figure><img class="chart" alt="{{ im.title }}" data-name="{{ im.title }}" src="{{ im.src }}"><figcaption>{{ im.title }}</figcaption></figure>{% endfor %}
{%- endmacro %}
{% macro missing(section) -%}
{% for m in section.missing %}<p class="missing">Not available: {{ m }}</p>{% endfor %}
{%- endmacro %}

<section id="promotion"><h2>Promotion decision</h2>
{% if promotion %}
<p class="decision {{ 'promote' if promotion.promote else 'keep' }}">{{ "PROMOTED to production" if promotion.promote else "KEPT current production" }}</p>
<ul>{% for r in promotion.reasons %}<li>{{ r }}</li>{% endfor %}</ul>
<table id="promotion-table"><thead><tr><th class="l">metric</th><th>candidate</th><th>production{% if promotion.production_version %} (v{{ promotion.production_version }}){% endif %}</th><th class="l">requirement</th><th>result</th></tr></thead><tbody>
{% for r in promotion.rows %}<tr><td class="l">{{ r.metric }}</td><td>{{ fmt(r.candidate) }}</td><td>{{ fmt(r.production) }}</td><td class="l">{{ r.requirement }}</td>
<td class="{{ {True: 'pass', False: 'FAIL'}.get(r.passed, '') }}">{{ {True: 'pass', False: 'FAIL'}.get(r.passed, '') }}</td></tr>{% endfor %}
</tbody></table>
{% else %}<p class="missing">Not available: report/promotion.json</p>{% endif %}
</section>

<section id="dataset"><h2>Dataset validation and rebalancing</h2>
{{ missing(dataset) }}
{% if dataset.findings is defined %}
<p><b>{{ dataset.errors }} errors, {{ dataset.warnings }} warnings</b>; recommended imgsz {{ dataset.recommended_imgsz }}.</p>
<h3>Findings by code</h3>{{ table(dataset.findings, "findings") }}
<h3>Splits</h3>{{ table(dataset.splits) }}
<h3>Leakage: duplicate groups</h3>
<p>{{ dataset.duplicate_groups }} duplicate groups found; those spanning splits:</p>{{ table(dataset.cross_split_groups, "leaks-found") }}
{% endif %}
{% if dataset.repaired_leaks is defined %}
<p>Dataset version <code>{{ dataset.version_id[:16] }}</code>. Leaks repaired (whole group kept in one split):</p>{{ table(dataset.repaired_leaks, "leaks-repaired") }}
<h3>Groups moved to raise val instances</h3>{{ table(dataset.moved_groups, "moved-groups") }}
{% endif %}
{% if dataset.balance is defined %}<h3>Class balance before and after rebalancing</h3>{{ table(dataset.balance, "balance") }}{% endif %}
{{ figures(dataset.images) }}
</section>

<section id="training"><h2>Training</h2>
{{ missing(training) }}
{% if not training.missing %}
<p>Epochs run: <b>{{ training.epochs_run }}</b>{% if training.planned %} of {{ training.planned }}{% endif %};
best epoch <b id="best-epoch">{{ training.best_epoch }}</b> by fitness ({{ training.fitness }});
stop reason: <b id="stop-reason">{{ training.stop_reason }}</b>.</p>
<p>Arguments: {% for k, v in training.args.items() %}<code>{{ k }}={{ v }}</code> {% endfor %}</p>
{{ figures(training.images) }}
{% endif %}
</section>

<section id="selection"><h2>Checkpoint selection</h2>
{{ missing(selection) }}
{% if not selection.missing %}
<p>Selected: <b id="winner">{{ selection.winner }}</b>. Policy: {{ selection.policy }}. Protocol: {{ selection.protocol }}.</p>
<h3>Candidates, re-evaluated on val</h3>{{ table(selection.candidates, "candidates") }}
{% if selection.explanation %}<h3>Training-time vs re-evaluation</h3><ul>{% for l in selection.explanation %}<li>{{ l }}</li>{% endfor %}</ul>{% endif %}
{% endif %}
</section>

<section id="per-class"><h2>Per class (val): new model, baseline, production</h2>
<p>All three evaluated with the same protocol on the same split.
Baseline: {{ comparison.baseline.reference or "unknown" }} ({{ comparison.baseline.status or "not evaluated" }}).
Production: {% if comparison.available.production %}v{{ comparison.production_version }}{% else %}none at decision time{% endif %}.</p>
<table id="per-class-table"><thead>
<tr><th class="l" rowspan="2">class</th>{% for m in comparison.models %}<th colspan="4">{{ m }}</th>{% endfor %}</tr>
<tr>{% for m in comparison.models %}{% for k in comparison.metric_keys %}<th>{{ k }}</th>{% endfor %}{% endfor %}</tr></thead><tbody>
{% for c in comparison.classes %}<tr{% if c == minority %} class="minority-row"{% endif %}><td class="l">{{ c }}</td>
{% for m in comparison.models %}{% for k in comparison.metric_keys %}{% set v = comparison.cells[(c, m, k)] %}<td data-class="{{ c }}" data-model="{{ m }}" data-metric="{{ k }}" data-value="{{ value_attr(v) }}">{{ fmt(v) }}</td>{% endfor %}{% endfor %}</tr>
{% endfor %}</tbody></table>
</section>

<section id="plots"><h2>PR curves and confusion matrices (selected checkpoint)</h2>
{% if selection.images %}<div class="grid">{{ figures(selection.images) }}</div>{% else %}<p class="missing">Not available: selection evaluation plots</p>{% endif %}
</section>

<section id="detections"><h2>Validation images: ground truth (green) and predictions (red)</h2>
{{ missing(detections) }}
{% if detections.tiles %}<p>{{ minority }} images first (outlined); predictions at conf {{ detections.conf }}, imgsz {{ detections.imgsz }}.</p>
<div class="grid">{% for t in detections.tiles %}<figure{% if t.minority %} class="minority"{% endif %}><img class="tile" alt="{{ t.title }}" data-name="{{ t.title }}" src="{{ t.src }}">
<figcaption><b>{{ t.title }}</b><br>truth: {{ t.truth }}<br>predicted: {{ t.predicted }}</figcaption></figure>{% endfor %}</div>{% endif %}
</section>

<section id="timings"><h2>Timings per task</h2>
{% if timings %}<table id="timings-table"><thead><tr><th class="l">task</th><th class="l">state</th><th class="l">start</th><th class="l">end</th><th>seconds</th></tr></thead><tbody>
{% for t in timings %}<tr><td class="l">{{ t.task }}</td><td class="l">{{ t.state }}</td><td class="l">{{ t.start }}</td><td class="l">{{ t.end or "running" }}</td><td>{{ "%.1f"|format(t.duration_s) if t.duration_s is not none else "–" }}</td></tr>{% endfor %}
</tbody></table>
{% if timings_chart %}{{ figures([timings_chart]) }}{% endif %}
{% else %}<p class="missing">Not available: report/timings.json</p>{% endif %}
</section>
</body></html>
"""
