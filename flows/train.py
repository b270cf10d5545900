"""The Phase 2 pipeline: validate → what changed → rebalance → fine-tune → select → register → promote → report.

Only orchestration lives here: parameters, task order, and the small values (paths, URIs,
ids) passed between tasks. Each task is in tasks/ (one module per stage); the work it calls is
in the phase2 package.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, runtime
from pydantic import Field

from phase2.infra import notifications
from phase2.infra.settings import DEFAULT_MODEL_NAME
from phase2.training.recipe import Recipe
from tasks.diff import dataset_changes
from tasks.fine_tune import train
from tasks.finish import finish_run
from tasks.label_review import label_review
from tasks.plan import plan_run
from tasks.promote import promote
from tasks.rebalance import rebalance
from tasks.register import register
from tasks.report import build_report
from tasks.selection import select
from tasks.validate import validate


# Webhook messages on failure, crash and promotion (phase2/infra/notifications.py; URL from config).
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
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
    ctx = plan_run(data, baseline, recipe_name, recipe, model_name, run_name, skip_if_unchanged, flow_run_id)
    if ctx.skip_reason:
        print(ctx.skip_reason)
        return {"status": "skipped", "reason": ctx.skip_reason}
    validation = validate(data, ctx)
    changes = dataset_changes(data, ctx, announce=skip_if_unchanged)  # since production's data; scheduled: webhook
    dataset = rebalance(data, validation, ctx)
    trained = train(dataset, validation, ctx)
    selection = select(trained, dataset, validation, ctx)
    label_review(selection.winner, dataset.data_yaml, selection.val.protocol.imgsz, ctx, validation=validation)
    registered = register(selection, trained, dataset, ctx)
    decision = promote(registered, selection, dataset, ctx)
    review = build_report(registered, selection, decision, dataset, ctx)
    return finish_run(
        ctx,
        {
            "status": "completed",
            "model": registered.ref,
            "promoted": decision.promote,
            "manifest": registered.manifest_uri,
            "selected": selection.winner_name,
            "val_mAP50": selection.val.metrics["overall"]["mAP50"],
            "gate": decision.summary(),  # the promotion gate's numbers on its split, each with ci95 and n
            "dataset_version": dataset.version_id,
            "what_changed": changes.summary,
            "run_uri": trained.run_uri,
            "report": review.uri,
            "wandb_report": review.wandb_report,
        },
    )
