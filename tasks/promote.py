"""Stage 6: promote the new version only if it beats production under the recipe's rule."""

from __future__ import annotations

import shutil

from prefect import task

from phase2.evaluation.evaluate import evaluate_checkpoint
from phase2.evaluation.promotion import PromotionDecision, promote_with_retry
from phase2.evaluation.selection import SelectionResult
from phase2.infra.publishing import Markdown, Publication, Table, logger, object_store, publish
from phase2.infra.settings import configure_environment
from phase2.registry.registry import ModelVersion, Registry
from phase2.runs import RunContext
from tasks import RETRIES, RETRY_DELAY_S
from tasks.rebalance import DatasetVersion
from tasks.register import Registered


@task(name="promote_model", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def promote(
    registered: Registered, selection: SelectionResult, dataset: DatasetVersion, ctx: RunContext
) -> PromotionDecision:
    configure_environment()
    registry = Registry(object_store(), ctx.model_name)

    def evaluate_production(production: ModelVersion) -> dict:
        # Same split, same protocol as the candidate: the comparison is only fair that way.
        folder = registry.download(production.ref, ctx.layout.stage_dir("production"))
        out_dir = ctx.layout.stage_dir("production-eval")
        shutil.rmtree(out_dir, ignore_errors=True)
        return evaluate_checkpoint(
            folder / registry.weights_file(production),
            dataset.data_yaml,
            split="val",
            imgsz=selection.val.protocol.imgsz,
            out_dir=out_dir,
        ).metrics

    decision = promote_with_retry(
        registry,
        registered.version,
        selection.val.metrics,
        ctx.recipe.promotion,
        evaluate_production,
        log=logger().info,
    )
    publish(
        ctx,
        Publication(
            stage="report",
            markdown=Markdown(key="promotion", text=decision.to_markdown(), description="Promotion gate"),
            tables=[
                Table(
                    key="promotion-comparison",
                    rows=[r.model_dump() for r in decision.rows],
                    wandb_key="promotion/comparison",
                    description="Candidate vs production",
                )
            ],
            summary={"promotion/promoted": decision.promote, "registry/ref": registered.ref},
        ),
    )
    return decision
