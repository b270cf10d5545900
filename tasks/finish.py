"""Wrap-up: the run summary (flow result, Prefect artifact, summary.json) and the W&B run closed."""

from __future__ import annotations

from typing import Any

from prefect import task

from phase2.infra.files import atomic_write_json
from phase2.infra.publishing import Markdown, Publication, finish_tracker, object_store, publish
from phase2.runs import RunContext, flow_run_summary_path


@task(name="finish_run")
def finish_run(ctx: RunContext, summary: dict[str, Any]) -> dict[str, Any]:
    summary = {**summary, "run_key": ctx.run_key, "s3_prefix": object_store().uri(ctx.layout.s3_prefix)}
    publish(
        ctx,
        Publication(
            stage="report",
            markdown=Markdown(
                key="run-summary",
                text="\n".join(f"- **{k}**: {v}" for k, v in summary.items()),
                description="Phase 2 run summary",
            ),
        ),
    )
    summary["wandb_run"] = finish_tracker(ctx)
    atomic_write_json(ctx.layout.summary_json, summary)
    if ctx.flow_run_id:  # `phase2 run` finds the summary of the flow run it triggered here
        atomic_write_json(flow_run_summary_path(ctx.flow_run_id, ctx.layout.state), summary)
    return summary
