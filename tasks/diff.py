"""Stage 1b: what changed since the data production was trained on (a diff of dataset listings).

The listing of this run's source dataset is written to the dataset stage (and registered with the
model, ``dataset/listing.json``), so the next run can compare against it without the old files.
Cheap: unchanged files are not re-read (the warm validation cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel

from phase2.dataset.diff import (
    LISTING_FILE,
    DiffError,
    diff_listings,
    diff_markdown,
    registry_listing,
    summary_line,
)
from phase2.dataset.diff import dataset_listing as read_listing
from phase2.dataset.index_cache import default_cache_dir
from phase2.infra import notifications
from phase2.infra.files import atomic_write_json, atomic_write_text
from phase2.infra.publishing import Markdown, Publication, Table, logger, object_store, publish
from phase2.infra.settings import configure_environment
from phase2.registry.registry import Registry
from phase2.registry.storage import StorageError
from phase2.report.wandb_report import WANDB_WHAT_CHANGED_TABLE
from phase2.runs import RunContext
from tasks import RETRIES, RETRY_DELAY_S

CHANGES_JSON = "changes.json"  # {"summary", "compared_with", "diff": `phase2 diff` JSON or null}; the report reads it


class DatasetChanges(BaseModel):
    summary: str
    listing_json: Path
    changes_json: Path
    compared_with: str | None  # the production version's ref


def per_class_rows(diff: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"split": split, "class": name, "old": n["old"], "new": n["new"], "change": n["new"] - n["old"]}
        for split, per_class in diff["per_class"].items()
        for name, n in per_class.items()
    ]


@task(name="dataset_changes", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def dataset_changes(data: str, ctx: RunContext, announce: bool = False) -> DatasetChanges:
    """Diff this run's source dataset against production's; `announce` (scheduled retraining) also
    sends the summary to the webhook."""
    configure_environment()
    cache = default_cache_dir()
    listing = read_listing(Path(data), cache)
    stage = ctx.layout.stage_dir("dataset")
    listing_json = atomic_write_text(stage / LISTING_FILE, listing.model_dump_json())
    registry = Registry(object_store(), ctx.model_name)
    production = registry.alias_target("production")
    diff = None
    if production is None:
        summary = "no production model yet: nothing to compare with"
    else:
        try:
            diff = diff_listings(registry_listing(production, registry, cache), listing)
            summary = f"since {production.ref}: {summary_line(diff)}"
        except (DiffError, StorageError) as exc:  # what changed is information: never a reason to fail
            summary = f"not compared with {production.ref}: {exc}"
    compared_with = production.ref if production else None
    changes_json = atomic_write_json(
        stage / CHANGES_JSON, {"summary": summary, "compared_with": compared_with, "diff": diff}
    )
    text = f"Since {compared_with}:\n\n{diff_markdown(diff)}" if diff else f"**{summary}**\n"
    logger().info("what changed: %s", summary)
    counts = {k: len(v) for k, v in diff["images"].items()} if diff else {}
    publish(
        ctx,
        Publication(
            stage="dataset",
            files={LISTING_FILE: listing_json, CHANGES_JSON: changes_json},
            markdown=Markdown(key="what-changed", text=text, description="What changed since production's data"),
            tables=[
                Table(
                    key="what-changed-per-class",
                    rows=per_class_rows(diff),
                    wandb_key=WANDB_WHAT_CHANGED_TABLE,
                    description="Instances per split and class: production's data vs this run's",
                )
            ]
            if diff
            else [],
            summary={
                "dataset/what_changed": summary,
                **{f"dataset/images_{k}": n for k, n in counts.items()},
                **({"dataset/labels_changed": len(diff["labels"]["changed"])} if diff else {}),
            },
        ),
    )
    if announce:
        notifications.send(notifications.retraining_notification(ctx.run_key, ctx.flow_run_id, summary, diff))
    return DatasetChanges(
        summary=summary,
        listing_json=listing_json,
        changes_json=changes_json,
        compared_with=compared_with,
    )
