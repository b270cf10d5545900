"""Stage 4b: label review. The selected model's out-of-sample predictions on val and test (and,
with the recipe's kfold_train, k-fold models' on train), scored by cleanlab's object-detection
label quality; a review queue in S3, a W&B table, the worst images."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from phase2.evaluation.kfold_review import kfold_predictions
from phase2.evaluation.label_review import (
    KFOLD_DIR,
    QUEUE_CSV,
    QUEUE_JSON,
    SUMMARY_JSON,
    TILES_DIR,
    OutOfFold,
    review_labels,
)
from phase2.infra.publishing import Link, Markdown, Publication, Table, logger, object_store, publish
from phase2.infra.settings import configure_environment
from phase2.report.charts import montage
from phase2.runs import RunContext
from tasks import RETRIES, RETRY_DELAY_S
from tasks.fine_tune import training_inputs
from tasks.validate import ValidationOutput


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
        *(
            [
                f"Train scored out of sample by {summary['kfold']['k']} fold models (each trained on the other folds).",
                "",
            ]
            if summary.get("kfold")
            else []
        ),
        "| # | image | split | score | issue | suspect |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rank']} | {Path(r['image']).name} | {r['split']} | {r['score']:.4f} | {r['issue']} "
        f"| {r['suspect'] or ''} |"
        for r in summary["shown"]
    ]
    return "\n".join(lines)


def out_of_fold_train(data_yaml: Path, validation: ValidationOutput | None, imgsz: int, ctx: RunContext) -> OutOfFold:
    """Train predicted by k-fold models: each fine-tuned from the run's start weights at the run's
    training size (a rerun reuses finished folds, locally or from S3)."""
    settings = ctx.recipe.label_review
    if validation is None:
        raise ValueError(
            "label_review.kfold_train needs the validation output (duplicate groups, training size): "
            "pass validation= to the label_review task, or set kfold_train: false"
        )
    store = object_store()
    weights, train_args = training_inputs(ctx, validation, store)
    train_args["epochs"] = settings.kfold_epochs or train_args["epochs"]
    return kfold_predictions(
        data_yaml,
        ctx.layout.stage_dir("label-review") / KFOLD_DIR,
        start_weights=weights,
        train_args=train_args,
        duplicate_groups=validation.duplicate_groups,
        k=settings.folds,
        imgsz=imgsz,
        conf=settings.conf,
        store=store,
        run_prefix=f"{ctx.layout.stage_prefix('label-review')}/{KFOLD_DIR}",
        logger=logger(),
    )


@task(name="label_review", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def label_review(
    winner: Path, data_yaml: Path, imgsz: int, ctx: RunContext, validation: ValidationOutput | None = None
) -> LabelReview:
    """Score the labels of the recipe's splits against ``winner``'s predictions at ``imgsz`` (and,
    with ``kfold_train``, train against k-fold models'); changes no data."""
    settings = ctx.recipe.label_review
    if not settings.enabled:
        return LabelReview(enabled=False)
    configure_environment()
    out_dir = ctx.layout.stage_dir("label-review")
    out_of_fold = out_of_fold_train(data_yaml, validation, imgsz, ctx) if settings.kfold_train else None
    result = review_labels(
        winner,
        data_yaml,
        out_dir,
        imgsz=imgsz,
        settings=settings,
        minority_class=ctx.recipe.minority_class,
        out_of_fold=out_of_fold,
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
            summary={
                "label_review/flagged": result.n_flagged,
                "label_review/images": result.n_images,
                **({"label_review/kfold_folds": result.kfold["k"]} if result.kfold else {}),
            },
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
