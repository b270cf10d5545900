"""The Prefect tasks of the phase2 flow: thin wrappers around each stage's plain functions.

Each wrapper runs its stage, then publishes what people look at (Prefect artifacts, W&B, S3)
and returns paths/URIs and small models only. Retries are safe: every stage is idempotent
(deterministic outputs, a COMPLETE marker for training, registration keyed by run).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from phase2.infra.files import sha256_bytes, sha256_file
from phase2.infra.settings import MINORITY_CLASS, configure_environment, state_dir
from phase2.training.recipe import Recipe, lint_recipe, load_recipe, resolve_imgsz

RETRIES = 2
RETRY_DELAY_S = 5
PROMOTION_ATTEMPTS = 10


class RunContext(BaseModel):
    """What every task needs to know about this pipeline run (small: passed between tasks)."""

    run_key: str
    work_dir: Path
    s3_prefix: str
    model_name: str
    source_dataset_version: str
    recipe: Recipe
    baseline: str
    flow_run_id: str | None = None
    skip_reason: str | None = None


class ValidationOutput(BaseModel):
    report_json: Path
    summary_md: Path
    recommended_imgsz: int | None
    errors: int
    warnings: int
    duplicate_groups: list[list[Path]]
    s3_uri: str | None


class DatasetVersion(BaseModel):
    data_yaml: Path
    version_id: str
    manifest_path: Path | None
    s3_uri: str | None


class Registered(BaseModel):
    ref: str
    version: int
    weights_sha256: str
    manifest_uri: str
    wandb_artifact: str | None


# --- shared plumbing -------------------------------------------------------------------------

_trackers: dict[str, Any] = {}


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a Prefect run (unit tests call the steps' .fn directly)
        return logging.getLogger("phase2")


def object_store():
    """The configured S3 store (env, else the local SeaweedFS), with the bucket ensured."""
    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.registry.storage import ObjectStore

    store = ObjectStore(resolve_s3_settings())
    store.ensure_bucket()
    return store


def tracker(ctx: RunContext):
    """The W&B run of this pipeline run, shared by all tasks in this process (resumed by id)."""
    from phase2.infra.tracking import Tracker

    if ctx.run_key not in _trackers:
        config = {
            "recipe": ctx.recipe.model_dump(mode="json"),
            "baseline": ctx.baseline,
            "model_name": ctx.model_name,
            "source_dataset_version": ctx.source_dataset_version,
            "s3_prefix": ctx.s3_prefix,
            "flow_run_id": ctx.flow_run_id,
        }
        _trackers[ctx.run_key] = Tracker(
            ctx.run_key, name=f"{ctx.model_name}-{ctx.run_key}", config=config, group=ctx.model_name
        )
    return _trackers[ctx.run_key]


def finish_tracker(ctx: RunContext) -> str | None:
    run = _trackers.pop(ctx.run_key, None)
    if run is None:
        return None
    path = run.run_path
    run.finish()
    return path


def publish_files(ctx: RunContext, stage: str, files: dict[str, Path]) -> dict[str, str]:
    """Copy a stage's outputs to s3://bucket/runs/<run_key>/<stage>/; returns name → URI."""
    store = object_store()
    uris = {}
    for name, path in files.items():
        if path and Path(path).is_file():
            key = f"{ctx.s3_prefix}/{stage}/{Path(path).name}"
            store.put_file(Path(path), key)
            uris[name] = store.uri(key)
    return uris


def _artifact_key(ctx: RunContext, what: str) -> str:
    return f"{what}-{ctx.model_name}".lower().replace("_", "-")


def _markdown(ctx: RunContext, what: str, text: str, description: str) -> None:
    create_markdown_artifact(markdown=text, key=_artifact_key(ctx, what), description=description)


def _table(ctx: RunContext, what: str, rows: list[dict[str, Any]], description: str) -> None:
    if rows:
        create_table_artifact(table=rows, key=_artifact_key(ctx, what), description=description)


# --- 0. plan the run ------------------------------------------------------------------------


def plan(
    data: str,
    baseline: str,
    recipe_name: str,
    recipe: Recipe | None,
    model_name: str,
    run_name: str | None,
    skip_if_unchanged: bool,
    flow_run_id: str | None,
) -> RunContext:
    configure_environment()
    from phase2.dataset.rebalance import dataset_version_id

    recipe = recipe or load_recipe(recipe_name)
    data_yaml = Path(data).expanduser().resolve()
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{data_yaml}: data.yaml not found. Pass data=PATH/TO/data.yaml")
    try:
        source_version = dataset_version_id(data_yaml)
    except Exception as exc:  # a broken dataset: validation will say exactly what is wrong
        logger().warning("dataset version could not be computed (%s); validation follows", exc)
        source_version = "unversioned-" + sha256_file(data_yaml)[:16]
    identity = {
        "data": str(data_yaml),
        "dataset": source_version,
        "baseline": baseline,
        "recipe": recipe.model_dump(mode="json"),
        "model": model_name,
    }
    run_key = run_name or sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:12]
    ctx = RunContext(
        run_key=run_key,
        work_dir=state_dir() / "pipeline" / run_key,
        s3_prefix=f"runs/{run_key}",
        model_name=model_name,
        source_dataset_version=source_version,
        recipe=recipe,
        baseline=baseline,
        flow_run_id=flow_run_id,
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    for warning in lint_recipe(recipe):
        logger().warning("recipe %s: %s: %s", recipe.name, warning.field, warning.message)
    if skip_if_unchanged:
        production = _production_version(model_name)
        lineage = (production.dataset or {}).get("source_version_id") if production else None
        if lineage == source_version:
            ctx.skip_reason = f"no new data: dataset {source_version[:12]} is what {production.ref} was trained on"
    return ctx


def _production_version(model_name: str):
    from phase2.registry.registry import Registry, RegistryError

    try:
        return Registry(object_store(), model_name).get("production")
    except RegistryError:
        return None


plan_run = task(plan, name="plan_run", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)


# --- 1. validate ----------------------------------------------------------------------------


@task(name="validate_dataset", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def validate_dataset(data: str, ctx: RunContext) -> ValidationOutput:
    configure_environment()
    from phase2.dataset.validation import ensure_valid
    from phase2.dataset.validation import validate_dataset as run_validation

    recipe = ctx.recipe
    imgsz = recipe.train.imgsz if isinstance(recipe.train.imgsz, int) else 640
    target = recipe.rebalance.targets.get(MINORITY_CLASS, 18)
    report = run_validation(
        Path(data),
        imgsz=imgsz,
        phash_threshold=recipe.validation.phash_threshold,
        minority_val_target=target,
        cache_dir=state_dir() / "validation-cache",
    )
    paths = report.write(ctx.work_dir / "validation")
    uris = publish_files(ctx, "validation", paths)
    summary = paths["summary.md"].read_text()
    _markdown(
        ctx,
        "dataset-validation",
        summary + f"\n\nFull report: {uris.get('report.json')}",
        "Dataset validation findings and statistics",
    )
    _table(ctx, "class-counts", [c.model_dump(mode="json") for c in report.classes], "Instances per class and split")
    run = tracker(ctx)
    run.log_images({"validation/class_counts": paths["class_counts.png"]})
    run.summary(
        {
            "validation/errors": len(report.errors()),
            "validation/duplicate_groups": len(report.duplicate_groups),
            "validation/recommended_imgsz": report.recommended_imgsz,
        }
    )
    allow = list(recipe.validation.allow)
    if recipe.rebalance.enabled:
        allow.append("DUP_CROSS_SPLIT")  # the next step repairs leakage before training
    ensure_valid(report, allow=allow)
    return ValidationOutput(
        report_json=paths["report.json"],
        summary_md=paths["summary.md"],
        recommended_imgsz=report.recommended_imgsz,
        errors=len(report.errors()),
        warnings=sum(1 for f in report.findings if f.severity == "warning"),
        duplicate_groups=[[m.image for m in g.members] for g in report.duplicate_groups],
        s3_uri=uris.get("report.json"),
    )


# --- 2. rebalance ---------------------------------------------------------------------------


@task(name="rebalance_validation", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def rebalance_validation(data: str, validation: ValidationOutput, ctx: RunContext) -> DatasetVersion:
    from phase2.dataset.rebalance import dataset_version_id
    from phase2.dataset.rebalance import rebalance_validation as run_rebalance
    from phase2.infra.recovery import fail_once_if_injected

    fail_once_if_injected()  # test-only: exercises the retry path (Prefect Variable phase2_faults)

    settings = ctx.recipe.rebalance
    if not settings.enabled:
        return DatasetVersion(
            data_yaml=Path(data), version_id=dataset_version_id(Path(data)), manifest_path=None, s3_uri=None
        )
    result = run_rebalance(
        Path(data),
        ctx.work_dir / "dataset",
        settings.targets,
        seed=settings.seed,
        duplicate_groups=validation.duplicate_groups,
    )
    uris = publish_files(
        ctx,
        "dataset",
        {
            "manifest": result.manifest_path,
            "data.yaml": result.data_yaml,
            "balance.csv": result.balance_csv,
            "balance.png": result.balance_png,
            **{f"{s}.txt": result.data_yaml.parent / f"{s}.txt" for s in ("train", "val", "test")},
        },
    )
    import pandas as pd

    from phase2.evaluation.selection import markdown_table

    balance = pd.read_csv(result.balance_csv)
    _table(ctx, "class-balance", balance.to_dict(orient="records"), "Class balance before/after rebalancing")
    _markdown(
        ctx,
        "rebalance",
        (
            f"Dataset version `{result.version_id}` (source `{result.source_version_id}`)\n\n"
            f"- moved groups: {len(result.moved_groups)}\n- repaired leaks: {len(result.repaired_leaks)}\n"
            f"- manifest: {uris.get('manifest')}\n\n" + markdown_table(balance)
        ),
        "Validation rebalancing",
    )
    run = tracker(ctx)
    run.log_images({"dataset/balance": result.balance_png})
    run.log_table("dataset/balance_table", balance.to_dict(orient="records"))
    run.summary(
        {
            "dataset/version_id": result.version_id,
            "dataset/moved_groups": len(result.moved_groups),
            "dataset/repaired_leaks": len(result.repaired_leaks),
        }
    )
    return DatasetVersion(
        data_yaml=result.data_yaml,
        version_id=result.version_id,
        manifest_path=result.manifest_path,
        s3_uri=uris.get("manifest"),
    )


# --- 3. fine-tune ---------------------------------------------------------------------------


@task(name="fine_tune", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def fine_tune(dataset: DatasetVersion, validation: ValidationOutput, ctx: RunContext):
    from phase2.registry.registry import Registry
    from phase2.training.fine_tune import fine_tune as run_fine_tune

    recipe = ctx.recipe
    imgsz = resolve_imgsz(recipe, validation.recommended_imgsz)
    for warning in lint_recipe(recipe, native_imgsz=_native_side(validation)):
        logger().warning("recipe %s: %s", warning.field, warning.message)
    store = object_store()
    start = recipe.train.model if recipe.train.model != "baseline" else ctx.baseline
    if start.endswith((".yaml", ".yml")) and "/" not in start:
        weights = start  # from scratch
    else:
        weights = str(Registry(store, ctx.model_name).resolve_reference(start, cache_dir=state_dir() / "weights"))
    result = run_fine_tune(
        weights=weights,
        data_yaml=dataset.data_yaml,
        train_args=recipe.train.ultralytics_kwargs(imgsz),
        save_dir=ctx.work_dir / "train",
        store=store,
        run_prefix=f"{ctx.s3_prefix}/train",
        tracker=tracker(ctx),
        logger=logger(),
    )
    tracker(ctx).summary(
        {
            "train/best_epoch": result.best_epoch,
            "train/stop_reason": result.stop_reason,
            "train/wall_time_s": result.wall_time_s,
            "train/s_per_epoch": result.s_per_epoch,
            "train/peak_rss_mb": result.peak_rss_mb,
        }
    )
    _markdown(
        ctx,
        "training",
        (
            f"- epochs: {result.epochs_completed}/{result.epochs_planned} ({result.stop_reason})\n"
            f"- best epoch: {result.best_epoch}\n- resumed after epoch: {result.resumed_from_epoch}\n"
            f"- wall time: {result.wall_time_s} s, {result.s_per_epoch} s/epoch, peak RSS {result.peak_rss_mb} MB\n"
            f"- run: {result.run_uri}\n- W&B: {result.wandb_run_path}\n"
        ),
        "Fine-tuning summary",
    )
    return result


def _native_side(validation: ValidationOutput) -> int | None:
    report = json.loads(Path(validation.report_json).read_text())
    sides = [max(s.get("width", 0), s.get("height", 0)) for s in report.get("native_sizes", [])]
    return max(sides) if sides else None


# --- 4. select ------------------------------------------------------------------------------


@task(name="select_checkpoint", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def select_checkpoint(trained, dataset: DatasetVersion, validation: ValidationOutput, ctx: RunContext):
    configure_environment()
    from phase2.evaluation.selection import select_checkpoint as run_selection

    imgsz = resolve_imgsz(ctx.recipe, validation.recommended_imgsz)
    result = run_selection(
        trained.save_dir, dataset.data_yaml, ctx.recipe.selection, imgsz=imgsz, out_dir=ctx.work_dir / "selection"
    )
    import pandas as pd

    candidates = pd.read_csv(result.candidates_csv)
    per_class = result.val.per_class_table()
    publish_files(
        ctx,
        "selection",
        {
            "candidates.csv": result.candidates_csv,
            "selection.md": result.summary_md,
            "per_class.csv": result.val.per_class_csv,
        },
    )
    _markdown(ctx, "selection", result.summary_md.read_text(), "Checkpoint selection")
    _table(ctx, "candidates", candidates.to_dict(orient="records"), "Re-evaluated checkpoints")
    _table(ctx, "per-class", per_class.to_dict(orient="records"), "Winner per class (val)")
    run = tracker(ctx)
    run.log_table("selection/candidates", candidates.to_dict(orient="records"))
    run.log_table("selection/per_class_val", per_class.to_dict(orient="records"))
    run.log_images(
        {
            k: v
            for k, v in {
                "selection/pr_curve": result.val.pr_curve_png,
                "selection/confusion_matrix": result.val.confusion_matrix_png,
            }.items()
            if v
        }
    )
    run.summary({f"selected/val/{k}": v for k, v in result.val.metrics["overall"].items()})
    if result.test:
        run.summary({f"selected/test/{k}": v for k, v in result.test.metrics["overall"].items()})
    return result


# --- 5. register ----------------------------------------------------------------------------


@task(name="register_model", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def register_model(selection, trained, dataset: DatasetVersion, ctx: RunContext) -> Registered:
    import torch
    import ultralytics

    from phase2.registry.registry import Registry

    store = object_store()
    registry = Registry(store, ctx.model_name)
    for existing in registry.list_versions():  # a retried or re-run flow registers once
        if (
            existing.flow_run_id == ctx.run_key
            and existing.files.get("weights/best.pt", None)
            and existing.files["weights/best.pt"].sha256 == selection.winner_sha256
        ):
            return Registered(
                ref=existing.ref,
                version=existing.version,
                weights_sha256=selection.winner_sha256,
                manifest_uri=store.uri(f"{registry.prefix}versions/v{existing.version}/manifest.json"),
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
    metadata = {
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
        "flow_run_id": ctx.run_key,
    }
    version = registry.register(files, metadata)
    artifact = run.log_model(
        selection.winner,
        ctx.model_name,
        aliases=["candidate", f"v{version.version}"],
        metadata={"registry_ref": version.ref, "sha256": selection.winner_sha256},
    )
    manifest_uri = store.uri(f"{registry.prefix}versions/v{version.version}/manifest.json")
    create_link_artifact(
        link=manifest_uri,
        link_text=version.ref,
        key=_artifact_key(ctx, "model-version"),
        description="Registered model version manifest",
    )
    return Registered(
        ref=version.ref,
        version=version.version,
        weights_sha256=selection.winner_sha256,
        manifest_uri=manifest_uri,
        wandb_artifact=artifact,
    )


# --- 6. promote -----------------------------------------------------------------------------


@task(name="promote_model", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def promote_model(
    registered: Registered, selection, dataset: DatasetVersion, validation: ValidationOutput, ctx: RunContext
):
    configure_environment()
    from phase2.evaluation.selection import evaluate_checkpoint
    from phase2.registry.registry import PromotionConflict, Registry, decide_promotion

    registry = Registry(object_store(), ctx.model_name)
    # Another flow may promote between our decision and our alias move (compare-and-swap refuses
    # it): then production changed, so evaluate the new production and decide again.
    for attempt in range(1, PROMOTION_ATTEMPTS + 1):
        production = _production_version(ctx.model_name)
        production_metrics = None
        if production is not None:
            # Same split, same protocol as the candidate: the comparison is only fair that way.
            folder = registry.download(production.ref, ctx.work_dir / "production")
            weights = folder / registry.weights_file(production)
            out_dir = ctx.work_dir / "production-eval"
            shutil.rmtree(out_dir, ignore_errors=True)
            production_metrics = evaluate_checkpoint(
                weights, dataset.data_yaml, split="val", imgsz=selection.val.protocol.imgsz, out_dir=out_dir
            ).metrics
        decision = decide_promotion(
            selection.val.metrics,
            production_metrics,
            ctx.recipe.promotion,
            production_version=production.version if production else None,
        )
        try:
            registry.apply_promotion(decision, registered.version)
            break
        except PromotionConflict as conflict:
            if attempt == PROMOTION_ATTEMPTS:
                raise
            logger().info("%s; deciding again (attempt %d)", conflict, attempt + 1)
    _markdown(ctx, "promotion", decision.to_markdown(), "Promotion gate")
    run = tracker(ctx)
    run.log_table("promotion/comparison", [r.model_dump() for r in decision.rows])
    run.summary({"promotion/promoted": decision.promote, "registry/ref": registered.ref})
    return decision


# --- 7. review report ------------------------------------------------------------------------


class ReviewReport(BaseModel):
    html: Path
    uri: str | None
    wandb_report: str | None


@task(name="build_report", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def build_report(registered: Registered, selection, decision, dataset: DatasetVersion, ctx: RunContext) -> ReviewReport:
    configure_environment()
    from phase2.registry.registry import Registry
    from phase2.report import report

    store = object_store()
    registry = Registry(store, ctx.model_name)
    version = registry.get(registered.ref).model_dump(mode="json")
    baseline_weights = (
        None
        if ctx.baseline.endswith((".yaml", ".yml"))
        else registry.resolve_reference(ctx.baseline, cache_dir=state_dir() / "weights")
    )
    report.prepare_report_inputs(
        ctx.work_dir,
        data_yaml=dataset.data_yaml,
        winner_weights=selection.winner,
        imgsz=selection.val.protocol.imgsz,
        baseline_reference=ctx.baseline,
        baseline_weights=baseline_weights,
        promotion=decision.model_dump(mode="json"),
        timings=report.task_timings(ctx.flow_run_id) if ctx.flow_run_id else None,
    )
    run = tracker(ctx)
    html_uri = store.uri(f"{ctx.s3_prefix}/report/report.html")
    links = {"this report in S3": html_uri, "model manifest": registered.manifest_uri, "W&B run": run.run_path}
    tables = report.report_tables(ctx.work_dir, version)
    run.log_table("report/per_class_comparison", tables["per-class-comparison"])
    run.log_table("report/timings", tables["timings"])
    run.log_images(report.wandb_images(ctx.work_dir))
    wandb_url = None
    if run.offline:
        logger().info("W&B is offline: W&B Report skipped (sync the run and rebuild online to get one)")
    else:
        spec = report.wandb_report_spec(
            entity=run.run.entity,
            project=run.run.project,
            run_id=run.run.id,
            title=f"{registered.ref} review (run {ctx.run_key})",
            description=f"Phase 2 run {ctx.run_key}: {registered.ref}",
            html_link=html_uri,
        )
        wandb_url = report.publish_wandb_report(spec)
        links["W&B report"] = wandb_url
        if registered.wandb_artifact:
            report.link_report_to_artifact(f"{run.run.entity}/{run.run.project}/{registered.wandb_artifact}", wandb_url)
        create_link_artifact(
            link=wandb_url,
            link_text=f"W&B report {registered.ref}",
            key=_artifact_key(ctx, "wandb-report"),
            description="W&B Report of this run",
        )
    html = report.build_html_report(
        ctx.work_dir, ctx.work_dir / "report" / "report.html", registry_version=version, links=links
    )
    uris = publish_files(ctx, "report", {"report.html": html})
    create_link_artifact(
        link=uris["report.html"],
        link_text=f"Review report {registered.ref}",
        key=_artifact_key(ctx, "review-report"),
        description="Self-contained HTML review report",
    )
    _table(ctx, "per-class-comparison", tables["per-class-comparison"], "Per class (val): new, baseline, production")
    _table(ctx, "task-timings", tables["timings"], "Task run timings")
    return ReviewReport(html=html, uri=uris["report.html"], wandb_report=wandb_url)


# --- wrap up --------------------------------------------------------------------------------


@task(name="finish_run")
def finish_run(ctx: RunContext, summary: dict[str, Any]) -> dict[str, Any]:
    wandb_path = finish_tracker(ctx)
    summary = {**summary, "wandb_run": wandb_path, "s3_prefix": object_store().uri(ctx.s3_prefix)}
    _markdown(ctx, "run-summary", "\n".join(f"- **{k}**: {v}" for k, v in summary.items()), "Phase 2 run summary")
    text = json.dumps(summary, indent=2, default=str)
    (ctx.work_dir / "summary.json").write_text(text)
    if ctx.flow_run_id:  # `phase2 run` finds the summary of the flow run it triggered here
        by_run = state_dir() / "pipeline" / "flow-runs"
        by_run.mkdir(parents=True, exist_ok=True)
        (by_run / f"{ctx.flow_run_id}.json").write_text(text)
    return summary


def environment_summary() -> dict[str, str]:
    return {k: os.environ.get(k, "") for k in ("PHASE2_STATE_DIR", "PHASE2_S3_ENDPOINT", "WANDB_MODE")}
