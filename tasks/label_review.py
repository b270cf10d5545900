"""Stage 4b: label review. The selected model's out-of-sample predictions on val and test, scored
by cleanlab's object-detection label quality; a review queue in S3, a W&B table, the worst images."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from phase2.evaluation.label_review import QUEUE_CSV, QUEUE_JSON, SUMMARY_JSON, TILES_DIR, review_labels
from phase2.infra.publishing import Link, Markdown, Publication, Table, publish
from phase2.infra.settings import configure_environment
from phase2.report.charts import montage
from phase2.runs import RunContext
from tasks import RETRIES, RETRY_DELAY_S


class LabelReview(BaseModel):
    enabled: bool
    summary_json: Path | None = None
    queue_uri: str | None = None


def _summary_markdown(summary: dict) -> str:
    lines = [
        f"# Label review ({summary['n_images']} images: {', '.join(summary['splits'])})",
        "",
        f"cleanlab flags {summary['n_flagged']}; suspected issues: "
        + ", ".join(f"{k} {v}" for k, v in summary["issues"].items()),
        "",
        "| # | image | split | score | issue | suspect |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rank']} | {Path(r['image']).name} | {r['split']} | {r['score']:.4f} | {r['issue']} "
        f"| {r['suspect'] or ''} |"
        for r in summary["shown"]
    ]
    return "\n".join(lines)


@task(name="label_review", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def label_review(winner: Path, data_yaml: Path, imgsz: int, ctx: RunContext) -> LabelReview:
    """Score the labels of the recipe's splits against ``winner``'s predictions at ``imgsz``; changes no data."""
    settings = ctx.recipe.label_review
    if not settings.enabled:
        return LabelReview(enabled=False)
    configure_environment()
    out_dir = ctx.layout.stage_dir("label-review")
    result = review_labels(
        winner, data_yaml, out_dir, imgsz=imgsz, settings=settings, minority_class=ctx.recipe.minority_class
    )
    summary = json.loads((out_dir / SUMMARY_JSON).read_text())
    queue = json.loads(result.queue_json.read_text())
    tiles = [out_dir / TILES_DIR / row["tile"] for row in result.shown]
    images = {}
    if tiles:
        montage(tiles, out_dir / "worst.png")
        images["label_review/worst"] = out_dir / "worst.png"
    uris = publish(
        ctx,
        Publication(
            stage="label-review",
            files={QUEUE_CSV: result.queue_csv, QUEUE_JSON: result.queue_json, SUMMARY_JSON: out_dir / SUMMARY_JSON},
            markdown=Markdown(key="label-review", text=_summary_markdown(summary), description="Label review"),
            tables=[
                Table(
                    key="label-review-queue",
                    rows=queue,
                    wandb_key="label_review/queue",
                    description="Images whose labels the model disagrees with, worst first",
                )
            ],
            images=images,
            summary={"label_review/flagged": result.n_flagged, "label_review/images": result.n_images},
        ),
    )
    queue_uri = uris.get(QUEUE_CSV)
    if queue_uri:
        publish(
            ctx,
            Publication(
                stage="label-review",
                links=[
                    Link(key="label-review-queue-csv", url=queue_uri, text=QUEUE_CSV, description="Label review queue")
                ],
            ),
        )
    return LabelReview(enabled=True, summary_json=out_dir / SUMMARY_JSON, queue_uri=queue_uri)
