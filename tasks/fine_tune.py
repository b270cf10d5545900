"""Stage 3: fine-tune from the baseline (W&B streaming, S3 checkpoints, crash resume)."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import task

from phase2.infra.publishing import Markdown, Publication, logger, object_store, publish, tracker
from phase2.infra.settings import state_dir
from phase2.registry.registry import Registry
from phase2.runs import RunContext
from phase2.training.fine_tune import FineTuneResult, fine_tune, start_weights
from phase2.training.identity import RunIdentity
from phase2.training.recipe import lint_recipe
from tasks import RETRIES, RETRY_DELAY_S
from tasks.rebalance import DatasetVersion
from tasks.validate import ValidationOutput


def training_inputs(ctx: RunContext, validation: ValidationOutput, store: Any) -> tuple[str, dict[str, Any]]:
    """The run's start weights (sha256-verified, cached) and Ultralytics arguments at the validated
    training size: the same for the fine-tune and for the label review's k-fold models."""
    registry = Registry(store, ctx.model_name)
    weights = start_weights(ctx.recipe, ctx.baseline, registry, cache_dir=state_dir() / "weights")
    return weights, ctx.recipe.train.ultralytics_kwargs(validation.imgsz)


@task(name="fine_tune", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def train(dataset: DatasetVersion, validation: ValidationOutput, ctx: RunContext) -> FineTuneResult:
    recipe = ctx.recipe
    for warning in lint_recipe(recipe, native_imgsz=validation.native_side):
        logger().warning("recipe %s: %s", warning.field, warning.message)
    store = object_store()
    weights, train_args = training_inputs(ctx, validation, store)
    result = fine_tune(
        weights=weights,
        data_yaml=dataset.data_yaml,
        train_args=train_args,
        identity=RunIdentity.of(dataset_version=dataset.version_id, weights=weights, train_args=train_args),
        save_dir=ctx.layout.stage_dir("train"),
        store=store,
        run_prefix=ctx.layout.stage_prefix("train"),
        tracker=partial(tracker, ctx),  # opened once the training child is started
        logger=logger(),
        checkpoint_interval_s=recipe.checkpoints.upload_interval_s,
    )
    publish(
        ctx,
        Publication(
            stage="train",
            markdown=Markdown(
                key="training",
                description="Fine-tuning summary",
                text=result.to_markdown(),
            ),
            summary={
                "train/best_epoch": result.best_epoch,
                "train/stop_reason": result.stop_reason,
                "train/wall_time_s": result.wall_time_s,
                "train/s_per_epoch": result.s_per_epoch,
                "train/peak_rss_mb": result.peak_rss_mb,
            },
        ),
    )
    return result
