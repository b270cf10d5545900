"""The review report of one pipeline run as one self-contained HTML file (images inlined).

Everything is read from the files the pipeline already wrote for the run (validation/, dataset/,
train/, selection/, production-eval/) plus report/, which :func:`~phase2.report.inputs.prepare_report_inputs`
fills. Any part may be missing: its section then says what is missing. The page is
``template.html`` (Jinja, autoescaped) beside this module.
"""

from __future__ import annotations

import base64
import math
import mimetypes
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader

from phase2.evaluation.evaluate import PLOT_FILES
from phase2.evaluation.label_review import QUEUE_CSV, SUMMARY_JSON, TILES_DIR
from phase2.evaluation.promotion import with_interval
from phase2.infra.files import atomic_write_text
from phase2.report.charts import gate_per_class_png, timings_png, training_curves_png
from phase2.report.inputs import (
    CANDIDATES_CSV,
    MODEL_COLUMNS,
    PER_CLASS_KEYS,
    SELECTION_JSON,
    ReportError,
    ReportFiles,
    model_metrics,
    per_class_comparison,
    read_json,
    read_selection,
    shown_name,
)
from phase2.runs import RunLayout
from phase2.training.history import read_results_csv, summarize_history

TEMPLATE = "template.html"
# Training arguments the report shows (args.yaml holds all of Ultralytics').
SHOWN_TRAIN_ARGS = (
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
SELECTION_PLOTS = (
    (PLOT_FILES["pr_curve_png"], "PR curve"),
    (PLOT_FILES["confusion_matrix_png"], "Confusion matrix"),
    (PLOT_FILES["confusion_matrix_normalized_png"], "Confusion matrix (normalized)"),
)
CANDIDATE_COLUMNS = [
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
]


def build_html_report(
    layout: RunLayout,
    out: Path,
    *,
    registry_version: dict[str, Any] | None = None,
    links: dict[str, str] | None = None,
    minority_class: str | None = None,
) -> Path:
    """Write the review report of the run ``layout`` to ``out`` (one HTML file, images inlined).

    ``registry_version``: the registered version's manifest (``ModelVersion.model_dump()``); its
    val metrics are the new model's numbers. ``links``: label → URL shown in the header (S3 copy,
    W&B run, W&B report). ``minority_class``: the recipe's minority class, highlighted (None: none).
    Returns ``out``.
    """
    if not layout.root.is_dir():
        raise ReportError(f"{layout.root}: no such run directory; pass <state>/pipeline/<run_key>")
    files = ReportFiles(layout)
    metrics = model_metrics(layout, registry_version)
    comparison = per_class_comparison(metrics)
    promotion = read_json(files.promotion_json)
    timings = read_json(files.timings_json) or []
    version = registry_version or {}
    context = {
        "run_key": layout.run_key,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_ref": f"{version['name']}:v{version['version']}" if version else None,
        "dataset_version": (version.get("dataset") or {}).get("version_id"),
        "links": links or {},
        "dataset": _dataset_section(layout),
        "training": _training_section(layout),
        "selection": _selection_section(layout, minority_class),
        "comparison": {
            "classes": comparison["class"].tolist(),
            "models": list(MODEL_COLUMNS),
            "available": {m: metrics[m] is not None for m in MODEL_COLUMNS},
            "metric_keys": PER_CLASS_KEYS,
            "cells": {
                (row["class"], m, k): row[f"{m}/{k}"]
                for _, row in comparison.iterrows()
                for m in MODEL_COLUMNS
                for k in PER_CLASS_KEYS
            },
            "baseline": read_json(files.baseline_json) or {},
            "production_version": (promotion or {}).get("production_version"),
        },
        "detections": _detections_section(layout, minority_class),
        "label_review": _label_review_section(layout),
        "promotion": promotion,
        "promotion_chart": _gate_chart(promotion),
        "interval": with_interval,
        "timings": timings,
        "timings_chart": _image("Task run durations", timings_png(timings), "image/png")
        if any(t.get("duration_s") is not None for t in timings)
        else None,
        "fmt": _fmt,
        "value_attr": _value_attr,
        "minority": minority_class,
        "promotion_file": shown_name(layout, files.promotion_json),
        "timings_file": shown_name(layout, files.timings_json),
    }
    environment = Environment(loader=PackageLoader("phase2", "report"), autoescape=True)
    return atomic_write_text(Path(out), environment.get_template(TEMPLATE).render(**context))


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _gate_chart(promotion: dict[str, Any] | None) -> dict[str, str] | None:
    chart = gate_per_class_png((promotion or {}).get("rows") or [])
    return _image("Promotion gate per class with 95% intervals", chart, "image/png") if chart else None


def _value_attr(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def _table(frame: pd.DataFrame, columns: list[str] | None = None) -> dict[str, Any]:
    columns = [c for c in (columns or list(frame.columns)) if c in frame.columns]
    rows = [[_fmt(None if pd.isna(v) else v) for v in row] for row in frame[columns].itertuples(index=False)]
    return {"columns": columns, "rows": rows}


def _image(title: str, source: Path | bytes, mime: str | None = None) -> dict[str, str]:
    """An image inlined as a data: URI (the page loads nothing from elsewhere)."""
    if isinstance(source, Path):
        mime = mime or mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        data = source.read_bytes()
    else:
        data = source
    return {"title": title, "src": f"data:{mime};base64,{base64.b64encode(data).decode()}"}


# --------------------------------------------------------------------------- sections


def _dataset_section(layout: RunLayout) -> dict[str, Any]:
    section: dict[str, Any] = {"missing": [], "images": []}
    validation, dataset = layout.stage_dir("validation"), layout.stage_dir("dataset")
    report_json, manifest_json = validation / "report.json", dataset / "manifest.json"
    balance_csv, balance_png = dataset / "balance.csv", dataset / "balance.png"  # drawn by the rebalance step
    class_counts_png = validation / "class_counts.png"
    report = read_json(report_json)
    if report is None:
        section["missing"].append(shown_name(layout, report_json))
    else:
        section.update(_validation_findings(report))
    manifest = read_json(manifest_json)
    if manifest is None:
        section["missing"].append(f"{shown_name(layout, manifest_json)} (rebalancing off or not run)")
    else:
        section.update(_rebalance_moves(manifest))
    if balance_csv.is_file():
        section["balance"] = _table(pd.read_csv(balance_csv))
        if balance_png.is_file():
            section["images"].append(_image("Class counts per split, before and after rebalancing", balance_png))
        else:
            section["missing"].append(shown_name(layout, balance_png))
    else:
        section["missing"].append(shown_name(layout, balance_csv))
    if class_counts_png.is_file():
        section["images"].append(_image("Instances per class and split (source dataset)", class_counts_png))
    changes = read_json(dataset / "changes.json")  # the dataset_changes task: since production's data
    if changes is not None:
        section["what_changed"] = _what_changed(changes)
    return section


def _what_changed(changes: dict[str, Any]) -> dict[str, Any]:
    """The "What changed" tables: images added/removed/modified/moved, label changes, class counts."""
    diff = changes.get("diff") or {"images": {}, "labels": {"changed": []}, "per_class": {}}
    images = [
        {"change": kind, "image": " -> ".join(p) if isinstance(p, list) else p}
        for kind, paths in diff["images"].items()
        for p in paths
    ]
    labels = [
        {
            "image": c["image"],
            **{k.replace("_", " "): len(c[k]) for k in ("added", "removed", "class_changed", "moved")},
        }
        for c in diff["labels"]["changed"]
    ]
    per_class = [
        {"split": split, "class": name, "old": n["old"], "new": n["new"]}
        for split, classes in diff["per_class"].items()
        for name, n in classes.items()
    ]
    return {
        "summary": changes["summary"],
        "images": _table(pd.DataFrame(images, columns=["change", "image"])),
        "labels": _table(pd.DataFrame(labels, columns=["image", "added", "removed", "class changed", "moved"])),
        "per_class": _table(pd.DataFrame(per_class, columns=["split", "class", "old", "new"])),
    }


def _validation_findings(report: dict[str, Any]) -> dict[str, Any]:
    """Findings by code, splits and cross-split duplicate groups of a validation report.json."""
    counts = Counter((f["code"], f["severity"]) for f in report["findings"])
    examples: dict[str, str] = {}
    for finding in report["findings"]:
        examples.setdefault(finding["code"], finding["message"])
    findings = pd.DataFrame(
        [
            {"code": code, "severity": severity, "count": n, "example": examples[code]}
            for (code, severity), n in sorted(counts.items())
        ],
        columns=["code", "severity", "count", "example"],
    )
    groups = report.get("duplicate_groups", [])
    cross_split = pd.DataFrame(
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
    return {
        "findings": _table(findings),
        "errors": sum(n for (_, s), n in counts.items() if s == "error"),
        "warnings": sum(n for (_, s), n in counts.items() if s == "warning"),
        "splits": _table(pd.DataFrame(report["splits"])),
        "duplicate_groups": len(groups),
        "cross_split_groups": _table(cross_split),
        "recommended_imgsz": report.get("recommended_imgsz"),
    }


def _rebalance_moves(manifest: dict[str, Any]) -> dict[str, Any]:
    """Leaks repaired and groups moved by the rebalance step (the dataset version's manifest.json)."""
    repaired = pd.DataFrame(
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
    moved = pd.DataFrame(
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
    return {"version_id": manifest["version_id"], "repaired_leaks": _table(repaired), "moved_groups": _table(moved)}


def _training_section(layout: RunLayout) -> dict[str, Any]:
    results_csv, args_yaml = layout.stage_dir("train") / "results.csv", layout.stage_dir("train") / "args.yaml"
    if not results_csv.is_file():
        return {"missing": [shown_name(layout, results_csv)]}
    history = summarize_history(results_csv)
    results = read_results_csv(results_csv)
    args = yaml.safe_load(args_yaml.read_text()) if args_yaml.is_file() else {}
    return {
        "missing": [],
        "best_epoch": history.best_epoch,
        "epochs_run": history.epochs_run,
        "planned": history.planned_epochs,
        "stop_reason": history.stop_reason,
        "fitness": history.fitness_formula,
        "args": {k: args[k] for k in SHOWN_TRAIN_ARGS if k in args},
        "images": [
            _image(
                "Training curves per epoch",
                training_curves_png(results, history.best_epoch, history.stop_reason),
                "image/png",
            )
        ],
    }


def _selection_section(layout: RunLayout, minority_class: str | None) -> dict[str, Any]:
    """The selection's result (selection.json), its candidates table and the winner's plots."""
    folder = layout.stage_dir("selection")
    section: dict[str, Any] = {"missing": [], "images": []}
    selection = read_selection(layout)
    if selection is None:
        section["missing"].append(shown_name(layout, folder / SELECTION_JSON))
    else:
        protocol = selection["val"]["protocol"]
        stem = Path(selection["winner_name"]).stem
        section.update(
            winner=stem,
            policy=f"{selection['policy']['kind']} ({selection['policy_description']})",
            protocol=f"conf {protocol['conf']:g}, iou {protocol['iou']:g}, imgsz {protocol['imgsz']}, "
            f"batch {protocol['batch']}",
            explanation=selection["explanation"],
        )
        for split in ("val", "test"):
            for file, title in SELECTION_PLOTS:
                if (folder / split / stem / file).is_file():
                    section["images"].append(_image(f"{title}, {split} split", folder / split / stem / file))
    candidates_csv = folder / CANDIDATES_CSV
    if candidates_csv.is_file():
        candidates = pd.read_csv(candidates_csv)
        minority_columns = [c for c in candidates.columns if minority_class and c.startswith(f"{minority_class}/")]
        section["candidates"] = _table(candidates, [*CANDIDATE_COLUMNS, *minority_columns])
    else:
        section["missing"].append(shown_name(layout, candidates_csv))
    return section


def _detections_section(layout: RunLayout, minority_class: str | None) -> dict[str, Any]:
    files = ReportFiles(layout)
    manifest = read_json(files.detections_json)
    if manifest is None:
        return {"missing": [shown_name(layout, files.detections_json)], "tiles": []}
    tiles = []
    for record in manifest["tiles"]:
        predicted = ", ".join(f"{p['class']} {p['conf']:.2f}" for p in record["predictions"]) or "none"
        tiles.append(
            {
                **_image(Path(record["image"]).name, files.detections / record["tile"]),
                "truth": ", ".join(record["ground_truth"]) or "background",
                "predicted": predicted,
                "minority": minority_class is not None and minority_class in record["ground_truth"],
            }
        )
    return {"missing": [], "tiles": tiles, "conf": manifest["conf"], "imgsz": manifest["imgsz"]}


def _label_review_section(layout: RunLayout) -> dict[str, Any]:
    """The label review's worst images (label-review/label_review.json and its tiles)."""
    folder = layout.stage_dir("label-review")
    summary = read_json(folder / SUMMARY_JSON)
    if summary is None:
        return {"missing": [f"{shown_name(layout, folder / SUMMARY_JSON)} (label review off or not run)"], "tiles": []}
    tiles = [
        {
            **_image(Path(row["image"]).name, folder / TILES_DIR / row["tile"]),
            **{k: row[k] for k in ("rank", "split", "issue", "suspect", "minority")},
            "score": f"{row['score']:.4f}",
        }
        for row in summary["shown"]
    ]
    settings = summary["settings"]
    return {
        "missing": [],
        "tiles": tiles,
        "n_images": summary["n_images"],
        "n_flagged": summary["n_flagged"],
        "issues": summary["issues"],
        "splits": ", ".join(summary["splits"]),
        "protocol": f"imgsz {summary['imgsz']}, conf {settings['conf']:g}",
        "queue": shown_name(layout, folder / QUEUE_CSV),
    }
