"""Stage 4: re-evaluate every checkpoint under one fixed protocol and select by the recipe's policy."""

from __future__ import annotations

import pandas as pd
from prefect import task

from phase2.evaluation.selection import SelectionResult, select_checkpoint
from phase2.infra.publishing import Markdown, Publication, Table, publish
from phase2.infra.settings import configure_environment
from phase2.runs import RunContext
from phase2.training.fine_tune import FineTuneResult
from tasks import RETRIES, RETRY_DELAY_S
from tasks.rebalance import DatasetVersion
from tasks.validate import ValidationOutput


@task(name="select_checkpoint", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def select(
    trained: FineTuneResult, dataset: DatasetVersion, validation: ValidationOutput, ctx: RunContext
) -> SelectionResult:
    configure_environment()
    result = select_checkpoint(
        trained.save_dir,
        dataset.data_yaml,
        ctx.recipe.selection,
        imgsz=validation.imgsz,
        out_dir=ctx.layout.stage_dir("selection"),
        gate_split=ctx.recipe.promotion.split,
    )
    candidates = pd.read_csv(result.candidates_csv).to_dict(orient="records")
    per_class = result.val.per_class_table().to_dict(orient="records")
    summary = {f"selected/val/{k}": v for k, v in result.val.metrics["overall"].items()}
    if result.test:
        summary |= {f"selected/test/{k}": v for k, v in result.test.metrics["overall"].items()}
    if result.gate:
        for name, entry in result.gate["metrics"].items():
            low, high = entry["ci95"] or (None, None)
            summary |= {f"selected/gate/{name}/ci95_low": low, f"selected/gate/{name}/ci95_high": high}
    publish(
        ctx,
        Publication(
            stage="selection",
            files={
                "candidates.csv": result.candidates_csv,
                "selection.md": result.summary_md,
                "selection.json": result.selection_json,
                "per_class.csv": result.val.per_class_csv,
            },
            markdown=Markdown(key="selection", text=result.summary_md.read_text(), description="Checkpoint selection"),
            tables=[
                Table(
                    key="candidates",
                    rows=candidates,
                    wandb_key="selection/candidates",
                    description="Re-evaluated checkpoints",
                ),
                Table(
                    key="per-class",
                    rows=per_class,
                    wandb_key="selection/per_class_val",
                    description="Winner per class (val)",
                ),
            ],
            images={
                k: v
                for k, v in {
                    "selection/pr_curve": result.val.pr_curve_png,
                    "selection/confusion_matrix": result.val.confusion_matrix_png,
                }.items()
                if v
            },
            summary=summary,
        ),
    )
    return result
