"""Stage 7: the review report (HTML in S3 + Prefect artifacts offline; a W&B Report online)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from phase2.evaluation.promotion import PromotionDecision
from phase2.evaluation.selection import SelectionResult
from phase2.infra.publishing import Link, Publication, Table, logger, object_store, publish, tracker
from phase2.infra.settings import configure_environment, state_dir
from phase2.registry.registry import Registry
from phase2.report.html import build_html_report
from phase2.report.inputs import prepare_report_inputs, report_tables, task_timings, wandb_images
from phase2.report.wandb_report import link_report_to_artifact, publish_wandb_report, wandb_report_spec
from phase2.runs import RunContext
from tasks import RETRIES, RETRY_DELAY_S
from tasks.rebalance import DatasetVersion
from tasks.register import Registered


class ReviewReport(BaseModel):
    html: Path
    uri: str | None
    wandb_report: str | None


@task(name="build_report", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def build_report(
    registered: Registered,
    selection: SelectionResult,
    decision: PromotionDecision,
    dataset: DatasetVersion,
    ctx: RunContext,
) -> ReviewReport:
    configure_environment()
    store = object_store()
    registry = Registry(store, ctx.model_name)
    version = registry.get(registered.ref).model_dump(mode="json")
    baseline_weights = (
        None
        if ctx.baseline.endswith((".yaml", ".yml"))
        else registry.resolve_reference(ctx.baseline, cache_dir=state_dir() / "weights")
    )
    layout = ctx.layout
    prepare_report_inputs(
        layout,
        data_yaml=dataset.data_yaml,
        winner_weights=selection.winner,
        imgsz=selection.val.protocol.imgsz,
        baseline_reference=ctx.baseline,
        baseline_weights=baseline_weights,
        promotion=decision.model_dump(mode="json"),
        timings=task_timings(ctx.flow_run_id) if ctx.flow_run_id else None,
        minority_class=ctx.recipe.minority_class,
    )
    run = tracker(ctx)
    html_uri = store.uri(layout.report_html_key)
    links = {"this report in S3": html_uri, "model manifest": registered.manifest_uri, "W&B run": run.run_path}
    if registered.export_messages:  # the card is next to the manifest; the label says which exports are usable
        card_label = "model card (" + "; ".join(registered.export_messages) + ")"
        links[card_label] = registered.manifest_uri.rsplit("/", 1)[0] + "/MODEL_CARD.md"
    wandb_url = None
    if run.offline:
        logger().info("W&B is offline: W&B Report skipped (sync the run and rebuild online to get one)")
    else:
        spec = wandb_report_spec(
            entity=run.run.entity,
            project=run.run.project,
            run_id=run.run.id,
            title=f"{registered.ref} review (run {ctx.run_key})",
            description=f"Phase 2 run {ctx.run_key}: {registered.ref}",
            html_link=html_uri,
        )
        wandb_url = links["W&B report"] = publish_wandb_report(spec)
        if registered.wandb_artifact:
            link_report_to_artifact(f"{run.run.entity}/{run.run.project}/{registered.wandb_artifact}", wandb_url)
    html = build_html_report(
        layout, layout.report_html, registry_version=version, links=links, minority_class=ctx.recipe.minority_class
    )
    tables = report_tables(layout, version)
    report_links = [
        Link(
            key="review-report",
            url=html_uri,
            text=f"Review report {registered.ref}",
            description="Self-contained HTML review report",
        )
    ]
    if wandb_url:
        report_links.append(
            Link(
                key="wandb-report",
                url=wandb_url,
                text=f"W&B report {registered.ref}",
                description="W&B Report of this run",
            )
        )
    uris = publish(
        ctx,
        Publication(
            stage="report",
            files={"report.html": html},
            tables=[
                Table(
                    key="per-class-comparison",
                    rows=tables["per-class-comparison"],
                    wandb_key="report/per_class_comparison",
                    description="Per class (val): new, baseline, production",
                ),
                Table(
                    key="task-timings",
                    rows=tables["timings"],
                    wandb_key="report/timings",
                    description="Task run timings",
                ),
            ],
            links=report_links,
            images=wandb_images(layout),
        ),
    )
    return ReviewReport(html=html, uri=uris["report.html"], wandb_report=wandb_url)
