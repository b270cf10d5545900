"""The Phase 2 pipeline: validate → rebalance → fine-tune → select → register → promote.

Only orchestration lives here: parameters, task order, and the small values (paths, URIs,
ids) passed between tasks. Each stage's work is in tasks/.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, runtime
from pydantic import Field

from phase2.infra import notifications
from phase2.infra.settings import DEFAULT_MODEL_NAME
from phase2.training.recipe import Recipe
from tasks import steps


# Webhook messages on failure, crash and promotion (tasks/notifications.py; URL from config).
@flow(
    name="phase2",
    log_prints=True,
    persist_result=False,
    on_failure=[notifications.flow_run_hook],
    on_crashed=[notifications.flow_run_hook],
    on_completion=[notifications.flow_run_hook],
)
def phase2(
    data: Annotated[str, Field(description="Path to the dataset's data.yaml (never modified).")],
    baseline: Annotated[
        str,
        Field(
            description="Start weights: local .pt, s3:// URI, or registry "
            "reference such as site-inspection-detector:production."
        ),
    ],
    recipe_name: Annotated[
        str, Field(description="A recipe in configs/ (phase2-seed, phase2-native, phase2-demo) or a path to one.")
    ] = "phase2-seed",
    recipe: Annotated[Recipe | None, Field(description="A whole recipe; overrides recipe_name.")] = None,
    model_name: str = DEFAULT_MODEL_NAME,
    run_name: Annotated[
        str | None,
        Field(description="Fixes the run key; by default it is derived from the inputs, so a re-run resumes."),
    ] = None,
    skip_if_unchanged: Annotated[
        bool, Field(description="Finish early when the production model was trained on this exact dataset.")
    ] = False,
) -> dict[str, Any]:
    ctx = steps.plan_run(
        data,
        baseline,
        recipe_name,
        recipe,
        model_name,
        run_name,
        skip_if_unchanged,
        str(runtime.flow_run.id) if runtime.flow_run.id else None,
    )
    if ctx.skip_reason:
        print(ctx.skip_reason)
        return {"status": "skipped", "reason": ctx.skip_reason}
    validation = steps.validate_dataset(data, ctx)
    dataset = steps.rebalance_validation(data, validation, ctx)
    trained = steps.fine_tune(dataset, validation, ctx)
    selection = steps.select_checkpoint(trained, dataset, validation, ctx)
    registered = steps.register_model(selection, trained, dataset, ctx)
    decision = steps.promote_model(registered, selection, dataset, validation, ctx)
    review = steps.build_report(registered, selection, decision, dataset, ctx)
    return steps.finish_run(
        ctx,
        {
            "status": "completed",
            "model": registered.ref,
            "promoted": decision.promote,
            "manifest": registered.manifest_uri,
            "selected": selection.winner_name,
            "val_mAP50": selection.val.metrics["overall"]["mAP50"],
            "dataset_version": dataset.version_id,
            "run_uri": trained.run_uri,
            "report": review.uri,
            "wandb_report": review.wandb_report,
        },
    )
