"""The one path by which a pipeline stage shows its results: S3, Prefect artifacts and W&B.

A stage describes what it has to show as a :class:`Publication` (files, a markdown summary,
tables, images, summary values) and calls :func:`publish` once. Files go to
``runs/<run_key>/<stage>/`` in the bucket, the markdown and tables become Prefect artifacts
keyed ``<what>-<model name>``, and tables, images and summary values go to the run's W&B run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError
from pydantic import BaseModel

from phase2.infra.seaweedfs import resolve_s3_settings
from phase2.infra.tracking import Tracker
from phase2.registry.storage import ObjectStore
from phase2.runs import RunContext, Stage


class Markdown(BaseModel):
    key: str
    text: str
    description: str


class Table(BaseModel):
    key: str
    rows: list[dict[str, Any]]
    description: str
    wandb_key: str | None = None  # also logged to W&B under this key


class Link(BaseModel):
    key: str
    url: str
    text: str
    description: str


class Publication(BaseModel):
    """What one stage shows. Paths of missing files are skipped (a stage may not produce them all)."""

    stage: Stage
    files: dict[str, Path] = {}
    markdown: Markdown | None = None
    tables: list[Table] = []
    links: list[Link] = []
    images: dict[str, Path] = {}
    summary: dict[str, Any] = {}


def logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:  # outside a Prefect run (library use, unit tests)
        return logging.getLogger("phase2")


def object_store() -> ObjectStore:
    """The configured S3 store (env, else the local SeaweedFS), with the bucket ensured."""
    store = ObjectStore(resolve_s3_settings())
    store.ensure_bucket()
    return store


_trackers: dict[str, Tracker] = {}


def tracker(ctx: RunContext) -> Tracker:
    """The W&B run of this pipeline run, shared by all tasks in this process (resumed by id)."""
    if ctx.run_key not in _trackers:
        config = {
            "recipe": ctx.recipe.model_dump(mode="json"),
            "baseline": ctx.baseline,
            "model_name": ctx.model_name,
            "source_dataset_version": ctx.source_dataset_version,
            "s3_prefix": ctx.layout.s3_prefix,
            "flow_run_id": ctx.flow_run_id,
        }
        _trackers[ctx.run_key] = Tracker(
            ctx.run_key, name=f"{ctx.model_name}-{ctx.run_key}", config=config, group=ctx.wandb_group or ctx.model_name
        )
    return _trackers[ctx.run_key]


def finish_tracker(ctx: RunContext) -> str | None:
    """Finish this run's W&B run; returns its path (None when none was started here)."""
    run = _trackers.pop(ctx.run_key, None)
    if run is None:
        return None
    path = run.run_path
    run.finish()
    return path


def artifact_key(ctx: RunContext, what: str) -> str:
    """Prefect artifact keys are per model name, so the latest run's artifact is the one shown."""
    return f"{what}-{ctx.model_name}".lower().replace("_", "-")


def publish(ctx: RunContext, publication: Publication) -> dict[str, str]:
    """Send a stage's publication everywhere it belongs; returns the S3 URI of each file by name."""
    uris: dict[str, str] = {}
    present = {name: Path(path) for name, path in publication.files.items() if path and Path(path).is_file()}
    if present:
        store = object_store()
        for name, path in present.items():
            key = ctx.layout.stage_key(publication.stage, path.name)
            store.put_file(path, key)
            uris[name] = store.uri(key)
    if publication.markdown is not None:
        text = publication.markdown.text
        if uris:
            text += "\n\nFiles:\n" + "\n".join(f"- {name}: {uri}" for name, uri in uris.items())
        create_markdown_artifact(
            markdown=text, key=artifact_key(ctx, publication.markdown.key), description=publication.markdown.description
        )
    for table in publication.tables:
        if table.rows:
            create_table_artifact(table=table.rows, key=artifact_key(ctx, table.key), description=table.description)
    for link in publication.links:
        create_link_artifact(
            link=link.url, link_text=link.text, key=artifact_key(ctx, link.key), description=link.description
        )
    wandb_tables = [table for table in publication.tables if table.wandb_key]
    if wandb_tables or publication.images or publication.summary:
        run = tracker(ctx)
        for table in wandb_tables:
            run.log_table(str(table.wandb_key), table.rows)
        if publication.images:
            run.log_images({k: Path(v) for k, v in publication.images.items() if v and Path(v).is_file()})
        if publication.summary:
            run.summary(publication.summary)
    return uris
