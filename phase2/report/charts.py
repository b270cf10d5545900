"""The report's charts, drawn with matplotlib as PNG bytes (embedded in the HTML), and the tile
montage logged to W&B."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

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


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def training_curves_png(results: pd.DataFrame, best_epoch: int | None, stop_reason: str) -> bytes:
    """Per-epoch losses, P, R, mAP50, mAP50-95 and learning rates; best epoch and stop reason marked."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _pyplot().subplots(2, 4, figsize=(16, 7))
    for ax, (title, series) in zip(axes.flat, CURVES, strict=True):
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
    """One bar per task run that finished: its duration in seconds, in run order top down."""
    shown = [t for t in timings if t.get("duration_s") is not None]
    fig, ax = _pyplot().subplots(figsize=(8, 0.45 * len(shown) + 1))
    ax.barh([t["task"] for t in shown][::-1], [t["duration_s"] for t in shown][::-1], color="tab:blue")
    ax.set_xlabel("seconds")
    ax.set_title("Task run durations")
    fig.tight_layout()
    return _png(fig)


def gate_per_class_png(rows: list[dict[str, Any]]) -> bytes | None:
    """Per-class AP50 and AP50-95 of candidate and production on the gate split, with 95% interval
    error bars and n per class; ``rows`` are the promotion decision's. None without class rows."""
    import numpy as np

    metrics = ("AP50", "AP50-95")
    per_class = {
        (r["metric"].rsplit(" ", 1)[0], r["metric"].rsplit(" ", 1)[1]): r
        for r in rows
        if " " in r["metric"] and r["metric"].rsplit(" ", 1)[1] in metrics
    }
    classes = list(dict.fromkeys(name for name, _ in per_class))
    if not classes:
        return None
    fig, axes = _pyplot().subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(classes))
    for ax, metric in zip(axes, metrics, strict=True):
        for offset, who, color in ((-0.2, "candidate", "tab:blue"), (0.2, "production", "tab:gray")):
            values, low, high = [], [], []
            for name in classes:
                row = per_class.get((name, metric)) or {}
                value, ci = row.get(who), row.get(f"{who}_ci95")
                values.append(np.nan if value is None else value)
                low.append(0.0 if value is None or not ci else value - ci[0])
                high.append(0.0 if value is None or not ci else ci[1] - value)
            if not np.all(np.isnan(values)):
                ax.bar(x + offset, values, 0.4, yerr=[low, high], capsize=4, color=color, label=who)
        labels = [f"{name}\nn={(per_class.get((name, metric)) or {}).get('n', '?')}" for name in classes]
        ax.set_xticks(x, labels)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric} with 95% intervals")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def montage(tiles: list[Path], out: Path, columns: int = 4) -> None:
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
