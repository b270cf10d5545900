"""Stage 5: register the selected model (versioned, checksummed, with lineage), once per run."""

from __future__ import annotations

import torch
import ultralytics
from prefect import task
from pydantic import BaseModel

from phase2.evaluation.selection import SelectionResult
from phase2.infra.files import sha256_file
from phase2.infra.publishing import Link, Publication, object_store, publish, tracker
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
    run = tracker(ctx)
    version = registry.register(
        files,
        {
            "metrics": {"val": selection.val.metrics, "test": selection.test.metrics if selection.test else None},
            "recipe": ctx.recipe.model_dump(mode="json"),
            "dataset": {
                "version_id": dataset.version_id,
                "source_version_id": ctx.source_dataset_version,
                "manifest_sha256": sha256_file(dataset.manifest_path) if dataset.manifest_path else None,
                "uri": dataset.s3_uri,
            },
            "baseline": {"reference": ctx.baseline},
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
        metadata={"registry_ref": version.ref, "sha256": selection.winner_sha256},
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
        ),
    )
    return Registered(
        ref=version.ref,
        version=version.version,
        weights_sha256=selection.winner_sha256,
        manifest_uri=manifest_uri,
        wandb_artifact=artifact,
    )
