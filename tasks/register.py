"""Stage 5: register the selected model (versioned, checksummed, with lineage), once per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import ultralytics
from prefect import task
from pydantic import BaseModel

from phase2.dataset.diff import LISTING_FILE, REGISTRY_LISTING
from phase2.dataset.layout import load_class_names
from phase2.deploy.package import Deployables, prepare_deployables
from phase2.evaluation.selection import SelectionResult
from phase2.infra.files import sha256_file
from phase2.infra.publishing import Link, Markdown, Publication, logger, object_store, publish, tracker
from phase2.registry.registry import Registry
from phase2.runs import RunContext
from phase2.training.fine_tune import FineTuneResult
from tasks import RETRIES, RETRY_DELAY_S
from tasks.rebalance import DatasetVersion


class Registered(BaseModel):
    ref: str
    version: int
    weights_sha256: str
    manifest_uri: str
    wandb_artifact: str | None
    exports: dict[str, bool] = {}  # format -> usable
    export_messages: list[str] = []  # one plain line per export: usable or not, and why


def gate_split(ctx: RunContext) -> str:
    """The split the promotion gate compares on (recipe ``promotion.split`` where it exists)."""
    return ctx.recipe.promotion.split


def deployables(
    selection: SelectionResult,
    dataset: DatasetVersion,
    ctx: RunContext,
    metadata: dict[str, Any],
    files: dict[str, Path],
) -> Deployables:
    """Exports (with parity on the gate split) and the model card for this registration."""
    split = gate_split(ctx)
    if split == "test" and selection.test is None:
        split = "val"  # a dataset without a test split: parity on val, which the card says
    return prepare_deployables(
        weights=selection.winner,
        data_yaml=dataset.data_yaml,
        protocol=selection.val.protocol.model_copy(update={"split": split}),
        settings=ctx.recipe.export,
        out_dir=ctx.layout.stage_dir("selection") / "deploy",
        card_inputs={
            "model_name": ctx.model_name,
            "names": load_class_names(dataset.data_yaml),
            "dataset": metadata["dataset"],
            "baseline": metadata["baseline"],
            "recipe": metadata["recipe"],
            "metrics": metadata["metrics"],
        },
        files=files,
        saved_matches=selection.gate_matches if selection.gate_split == split else None,  # no second .pt pass
    )


@task(name="register_model", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def register(
    selection: SelectionResult, trained: FineTuneResult, dataset: DatasetVersion, ctx: RunContext
) -> Registered:
    registry = Registry(object_store(), ctx.model_name)
    existing = registry.find_registration(ctx.run_key, selection.winner_sha256)  # a retried or re-run flow
    if existing is not None:
        return Registered(
            ref=existing.ref,
            version=existing.version,
            weights_sha256=selection.winner_sha256,
            manifest_uri=registry.manifest_uri(existing.version),
            wandb_artifact=None,
            exports={fmt: e.usable for fmt, e in existing.exports.items()},
        )
    files = {
        "weights/best.pt": selection.winner,
        "results.csv": trained.results_csv,
        "args.yaml": trained.args_yaml,
        "selection.md": selection.summary_md,
        "candidates.csv": selection.candidates_csv,
    }
    if dataset.manifest_path:
        files["dataset/manifest.json"] = dataset.manifest_path
    if (listing := ctx.layout.stage_dir("dataset") / LISTING_FILE).is_file():
        files[REGISTRY_LISTING] = listing  # what `phase2 diff NAME:REF` compares against
    metadata: dict[str, Any] = {
        "metrics": {"val": selection.val.metrics, "test": selection.test.metrics if selection.test else None},
        "recipe": ctx.recipe.model_dump(mode="json"),
        "dataset": {
            "version_id": dataset.version_id,
            "source_version_id": ctx.source_dataset_version,
            "manifest_sha256": sha256_file(dataset.manifest_path) if dataset.manifest_path else None,
            "uri": dataset.s3_uri,
        },
        "baseline": {"reference": ctx.baseline},
    }
    deploy = deployables(selection, dataset, ctx, metadata, files)
    logger().info(f"export parity measured against the .pt's {deploy.reference}")
    for line in deploy.messages():
        (logger().info if " usable (" in line else logger().warning)(line)
    run = tracker(ctx)
    version = registry.register(
        files | deploy.files,
        metadata
        | {
            "exports": deploy.exports,
            "ultralytics_version": ultralytics.__version__,
            "torch_version": torch.__version__,
            "wandb_run_path": run.run_path,
            "run_key": ctx.run_key,
        },
    )
    artifact = run.log_model(
        selection.winner,
        ctx.model_name,
        aliases=["candidate", f"v{version.version}"],
        metadata={
            "registry_ref": version.ref,
            "sha256": selection.winner_sha256,
            "exports": {fmt: e.usable for fmt, e in deploy.exports.items()},
        },
        extra_files=deploy.files,
    )
    manifest_uri = registry.manifest_uri(version.version)
    publish(
        ctx,
        Publication(
            stage="selection",
            links=[
                Link(
                    key="model-version",
                    url=manifest_uri,
                    text=version.ref,
                    description="Registered model version manifest",
                )
            ],
            markdown=Markdown(
                key="model-card",
                text=deploy.files["MODEL_CARD.md"].read_text(),
                description=f"Model card of {version.ref}",
            ),
            summary={"exports": deploy.messages()},
        ),
    )
    return Registered(
        ref=version.ref,
        version=version.version,
        weights_sha256=selection.winner_sha256,
        manifest_uri=manifest_uri,
        wandb_artifact=artifact,
        exports={fmt: e.usable for fmt, e in deploy.exports.items()},
        export_messages=deploy.messages(),
    )
