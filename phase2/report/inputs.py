"""What the review report reads: the files the pipeline wrote for one run, plus those only the
report step produces (:func:`prepare_report_inputs`), and the tables built from them.

Everything is found through the run's :class:`~phase2.runs.RunLayout`. Ultralytics is imported
inside functions: call ``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from phase2.dataset.labels import read_boxes
from phase2.dataset.layout import label_path_for, resolve_split_images
from phase2.evaluation.evaluate import evaluate_checkpoint
from phase2.infra.files import atomic_write_json
from phase2.report.charts import montage
from phase2.runs import RunLayout

PER_CLASS_KEYS = ("precision", "recall", "AP50", "AP50-95")
MODEL_COLUMNS = ("new", "baseline", "production")
SELECTION_JSON = "selection.json"  # written by phase2.evaluation.selection.select_checkpoint
CANDIDATES_CSV = "candidates.csv"
METRICS_JSON = "metrics.json"  # in every evaluation folder (evaluate_checkpoint)
DETECTIONS_JSON = "detections.json"
DETECTIONS_GRID = "grid.jpg"


class ReportError(RuntimeError):
    """A report that cannot be found or built (the message says why and what to do)."""


class ReportFiles:
    """The files the report step writes under a run's ``report/`` folder."""

    def __init__(self, layout: RunLayout):
        self.dir = layout.stage_dir("report")
        self.baseline_json = self.dir / "baseline.json"
        self.baseline_eval = self.dir / "baseline-eval"
        self.detections = self.dir / "detections"
        self.detections_json = self.detections / DETECTIONS_JSON
        self.detections_grid = self.detections / DETECTIONS_GRID
        self.promotion_json = self.dir / "promotion.json"
        self.timings_json = self.dir / "timings.json"


def shown_name(layout: RunLayout, path: Path) -> str:
    """A run's file as the report names it (``<stage>/<file>``), e.g. when it is missing."""
    return path.relative_to(layout.root).as_posix()


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file (the report then says so)."""
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- task timings


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


# --------------------------------------------------------------------------- detections

GROUND_TRUTH_COLOUR = (0, 200, 0)
PREDICTION_COLOUR = (230, 30, 30)


def render_detections(
    weights: Path,
    data_yaml: Path,
    out_dir: Path,
    *,
    imgsz: int,
    conf: float = 0.25,
    max_images: int = 12,
    tile_width: int = 480,
    minority_class: str | None = None,
) -> Path:
    """Val images with ground-truth (green) and predicted (red) boxes, ``minority_class`` images first.

    Writes ``NN_<name>.jpg`` tiles, their ``grid.jpg`` montage and ``detections.json`` (one record
    per tile) into ``out_dir``; returns the JSON path. Predictions use ``imgsz`` and ``conf``.
    """
    from PIL import Image, ImageDraw
    from ultralytics import YOLO
    from ultralytics.engine.results import Results

    from phase2.training.checkpoints import verify_checkpoint

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model = YOLO(str(verify_checkpoint(weights)))  # a safe load first: Ultralytics unpickles fully
    names = [model.names[i] for i in sorted(model.names)]

    def name_of(class_id: int) -> str:
        return names[class_id] if class_id < len(names) else str(class_id)

    minority = names.index(minority_class) if minority_class in names else None
    val_images = sorted(resolve_split_images(Path(data_yaml)).get("val", []), key=lambda p: p.name)
    labelled = [(image, read_boxes(label_path_for(image))) for image in val_images]
    labelled.sort(key=lambda item: (not any(box[0] == minority for box in item[1]), item[0].name))
    records: list[dict[str, Any]] = []
    for index, (image, truth) in enumerate(labelled[:max_images]):
        (result,) = model.predict(str(image), imgsz=imgsz, conf=conf, verbose=False)
        assert isinstance(result, Results) and result.boxes is not None  # a detection model's result
        boxes = result.boxes
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
            draw.rectangle(box, outline=GROUND_TRUTH_COLOUR, width=2)
            draw.text((box[0] + 2, box[1] + 1), name_of(class_id), fill=GROUND_TRUTH_COLOUR)
        predictions = []
        for xyxy, class_id, score in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True):
            scaled = [v * scale for v in xyxy]
            draw.rectangle(scaled, outline=PREDICTION_COLOUR, width=2)
            draw.text((scaled[0] + 2, scaled[3] - 11), f"{names[int(class_id)]} {score:.2f}", fill=PREDICTION_COLOUR)
            predictions.append({"class": names[int(class_id)], "conf": round(float(score), 3)})
        tile_path = out_dir / f"{index:02d}_{image.stem}.jpg"
        tile.save(tile_path, quality=85)
        records.append(
            {
                "tile": tile_path.name,
                "image": str(image),
                "ground_truth": [name_of(box[0]) for box in truth],
                "predictions": predictions,
            }
        )
    if records:
        montage([out_dir / r["tile"] for r in records], out_dir / DETECTIONS_GRID)
    manifest = {
        "conf": conf,
        "imgsz": imgsz,
        "weights": str(weights),
        "minority_class": minority_class,
        "tiles": records,
    }
    return atomic_write_json(out_dir / DETECTIONS_JSON, manifest)


# --------------------------------------------------------------------------- report step


def prepare_report_inputs(
    layout: RunLayout,
    *,
    data_yaml: Path,
    winner_weights: Path,
    imgsz: int,
    baseline_reference: str,
    baseline_weights: Path | None,
    promotion: dict[str, Any] | None,
    timings: list[TaskTiming] | None,
    minority_class: str | None = None,
) -> Path:
    """Write what only the report step knows into the run's ``report/`` folder; returns that folder.

    - ``baseline-eval/``: the baseline evaluated under the selection protocol (val split of the
      trained dataset version) when it is a ``.pt`` checkpoint; ``baseline.json`` says what was done.
    - ``detections/``: see :func:`render_detections` (``minority_class`` images first).
    - ``promotion.json``, ``timings.json``.
    """
    files = ReportFiles(layout)
    files.dir.mkdir(parents=True, exist_ok=True)
    baseline: dict[str, Any] = {"reference": baseline_reference}
    if baseline_weights is None or Path(baseline_weights).suffix != ".pt":
        baseline["status"] = "not evaluated: the baseline is not a .pt checkpoint (training started from scratch)"
    else:
        try:
            evaluated = evaluate_checkpoint(
                Path(baseline_weights), data_yaml, split="val", imgsz=imgsz, out_dir=files.baseline_eval
            )
            baseline.update(status="evaluated", weights=str(evaluated.weights), sha256=evaluated.weights_sha256)
        except ValueError as error:  # e.g. a baseline with other classes: not comparable
            baseline["status"] = f"not evaluated: {error}"
    atomic_write_json(files.baseline_json, baseline)
    render_detections(winner_weights, data_yaml, files.detections, imgsz=imgsz, minority_class=minority_class)
    if promotion is not None:
        atomic_write_json(files.promotion_json, promotion)
    if timings is not None:
        atomic_write_json(files.timings_json, [t.model_dump() for t in timings])
    return files.dir


# --------------------------------------------------------------------------- tables


def read_selection(layout: RunLayout) -> dict[str, Any] | None:
    """The checkpoint selection's result (``SelectionResult`` as JSON), None when not run."""
    return read_json(layout.stage_dir("selection") / SELECTION_JSON)


def winner_stem(layout: RunLayout) -> str | None:
    """The selected candidate's evaluation folder name (``best`` for best.pt)."""
    selection = read_selection(layout)
    return Path(selection["winner_name"]).stem if selection else None


def model_metrics(layout: RunLayout, registry_version: dict[str, Any] | None) -> dict[str, dict | None]:
    """Val metrics (overall + per class) of the new model, the baseline and production.

    The new model's numbers are the registry version's own (what was registered), else the
    selection's evaluation of the winner.
    """
    new = ((registry_version or {}).get("metrics") or {}).get("val")
    if new is None and (stem := winner_stem(layout)):
        new = read_json(layout.stage_dir("selection") / "val" / stem / METRICS_JSON)
    return {
        "new": new,
        "baseline": read_json(ReportFiles(layout).baseline_eval / METRICS_JSON),
        "production": read_json(layout.stage_dir("production-eval") / METRICS_JSON),
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


def report_tables(layout: RunLayout, registry_version: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """The key tables as rows (Prefect table artifacts, W&B tables): per-class comparison, timings."""
    comparison = per_class_comparison(model_metrics(layout, registry_version))
    records = comparison.astype(object).where(comparison.notna(), None).to_dict(orient="records")
    return {
        "per-class-comparison": [{str(k): v for k, v in row.items()} for row in records],
        "timings": read_json(ReportFiles(layout).timings_json) or [],
    }


def wandb_images(layout: RunLayout) -> dict[str, Path]:
    """The report's images to log to W&B: key → file."""
    grid = ReportFiles(layout).detections_grid
    return {"report/detections": grid} if grid.is_file() else {}
