"""Stage 2: repair leaked duplicate groups and rebalance the validation split (a new version)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from pydantic import BaseModel

from phase2.dataset.layout import SPLITS
from phase2.dataset.rebalance import dataset_version_id, rebalance_validation
from phase2.evaluation.selection import markdown_table
from phase2.infra.publishing import Markdown, Publication, Table, publish
from phase2.infra.recovery import fail_once_if_injected
from phase2.runs import RunContext
from tasks import RETRIES, RETRY_DELAY_S
from tasks.validate import ValidationOutput


class DatasetVersion(BaseModel):
    data_yaml: Path
    version_id: str
    manifest_path: Path | None
    s3_uri: str | None


@task(name="rebalance_validation", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def rebalance(data: str, validation: ValidationOutput, ctx: RunContext) -> DatasetVersion:
    fail_once_if_injected()  # test-only: exercises the retry path (Prefect Variable phase2_faults)
    settings = ctx.recipe.rebalance
    if not settings.enabled:
        return DatasetVersion(
            data_yaml=Path(data), version_id=dataset_version_id(Path(data)), manifest_path=None, s3_uri=None
        )
    result = rebalance_validation(
        Path(data),
        ctx.layout.stage_dir("dataset"),
        settings.targets,
        seed=settings.seed,
        duplicate_groups=validation.duplicate_groups,
        test_targets=settings.test_targets,
    )
    balance = pd.read_csv(result.balance_csv).to_dict(orient="records")
    image_lists = {f"{s}.txt": result.data_yaml.parent / f"{s}.txt" for s in SPLITS}
    outputs = {"manifest": result.manifest_path, "data.yaml": result.data_yaml, "balance.csv": result.balance_csv}
    uris = publish(
        ctx,
        Publication(
            stage="dataset",
            files={**outputs, "balance.png": result.balance_png, **image_lists},
            markdown=Markdown(
                key="rebalance",
                description="Validation rebalancing",
                text=(
                    f"Dataset version `{result.version_id}` (source `{result.source_version_id}`)\n\n"
                    f"- moved groups: {len(result.moved_groups)} (into test, the promotion gate's split: "
                    f"{sum(g.to_split == 'test' for g in result.moved_groups)})\n"
                    f"- repaired leaks: {len(result.repaired_leaks)}\n\n" + markdown_table(pd.DataFrame(balance))
                ),
            ),
            tables=[
                Table(
                    key="class-balance",
                    rows=balance,
                    wandb_key="dataset/balance_table",
                    description="Class balance before/after rebalancing",
                )
            ],
            images={"dataset/balance": result.balance_png},
            summary={
                "dataset/version_id": result.version_id,
                "dataset/moved_groups": len(result.moved_groups),
                "dataset/repaired_leaks": len(result.repaired_leaks),
            },
        ),
    )
    return DatasetVersion(
        data_yaml=result.data_yaml,
        version_id=result.version_id,
        manifest_path=result.manifest_path,
        s3_uri=uris.get("manifest"),
    )
