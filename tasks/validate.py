"""Stage 1: validate the dataset (read-only) and stop the run on errors the recipe does not allow.

It also fixes the run's training size: a recipe's ``imgsz: native`` is resolved here, once, to the
dataset's recommended size, before any size check; fine-tuning and selection use the same value
(``ValidationOutput.imgsz``)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from phase2.dataset.index_cache import default_cache_dir
from phase2.dataset.validation import ensure_valid, validate_for_recipe
from phase2.infra.publishing import Markdown, Publication, Table, publish
from phase2.infra.settings import configure_environment
from phase2.runs import RunContext
from phase2.training.recipe import resolve_imgsz
from tasks import RETRIES, RETRY_DELAY_S


class ValidationOutput(BaseModel):
    report_json: Path
    summary_md: Path
    # The size this run trains and evaluates at: the recipe's, or for "native" the recommended one.
    imgsz: int
    recommended_imgsz: int | None
    native_side: int | None
    errors: int
    warnings: int
    duplicate_groups: list[list[Path]]
    s3_uri: str | None


@task(name="validate_dataset", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def validate(data: str, ctx: RunContext) -> ValidationOutput:
    configure_environment()
    recipe = ctx.recipe
    report = validate_for_recipe(Path(data), recipe, cache_dir=default_cache_dir())
    paths = report.write(ctx.layout.stage_dir("validation"))
    uris = publish(
        ctx,
        Publication(
            stage="validation",
            files=paths,
            markdown=Markdown(
                key="dataset-validation",
                text=paths["summary.md"].read_text(),
                description="Dataset validation findings and statistics",
            ),
            tables=[
                Table(
                    key="class-counts",
                    rows=[c.model_dump(mode="json") for c in report.classes],
                    description="Instances per class and split",
                )
            ],
            images={"validation/class_counts": paths["class_counts.png"]},
            summary={
                "validation/errors": len(report.errors()),
                "validation/duplicate_groups": len(report.duplicate_groups),
                "validation/recommended_imgsz": report.recommended_imgsz,
                "validation/imgsz": report.imgsz,
            },
        ),
    )
    allow = list(recipe.validation.allow)
    if recipe.rebalance.enabled:
        allow.append("DUP_CROSS_SPLIT")  # the next step repairs leakage before training
    ensure_valid(report, allow=allow)
    return ValidationOutput(
        report_json=paths["report.json"],
        summary_md=paths["summary.md"],
        # "native" without a decodable image raises RecipeError here, naming the recipe.
        imgsz=resolve_imgsz(recipe, report.recommended_imgsz),
        recommended_imgsz=report.recommended_imgsz,
        native_side=report.largest_native_side(),
        errors=len(report.errors()),
        warnings=len(report.warnings()),
        duplicate_groups=[[m.image for m in g.members] for g in report.duplicate_groups],
        s3_uri=uris.get("report.json"),
    )
