"""The study's HTML page: one self-contained file (chart inlined), styled like the review report."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader

from phase2.infra.files import atomic_write_text
from phase2.report.charts import _png, _pyplot  # the report's matplotlib setup, shared
from phase2.report.html import _image

TEMPLATE = "template.html"


def seeds_chart_png(summary: dict[str, Any]) -> bytes:
    """Per metric: every seed's value (dots) and the recipe's mean ± sd (bar and error bar)."""
    plt = _pyplot()
    metrics = list(summary["recipes"][0]["metrics"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for x, row in enumerate(summary["recipes"]):
            spread = row["metrics"][metric]
            if spread["mean"] is not None:
                ax.bar(x, spread["mean"], yerr=spread["sd"] or 0, color="#9ecae1", capsize=6, width=0.6)
            values = [v for v in spread["values"] if v is not None]
            ax.plot([x] * len(values), values, "o", color="#08519c", markersize=5)
        ax.set_xticks(range(len(summary["recipes"])), [r["recipe"] for r in summary["recipes"]], fontsize=8)
        ax.set_title(f"{metric} ({summary['split']})", fontsize=10)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    return _png(fig)


def fmt(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v, signed) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return str(value)


def build_study_html(summary: dict[str, Any], out: Path) -> Path:
    """Write the study page for ``summary`` (``summarize_study`` plus the study's identity) to ``out``."""
    context = {
        **summary,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "metric_names": list(summary["recipes"][0]["metrics"]),
        "chart": _image("Every seed and the mean ± sd per recipe", seeds_chart_png(summary), "image/png"),
        "fmt": fmt,
    }
    environment = Environment(loader=PackageLoader("phase2", "study"), autoescape=True)
    return atomic_write_text(Path(out), environment.get_template(TEMPLATE).render(**context))
