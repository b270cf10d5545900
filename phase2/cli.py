"""`phase2` command line. Each command is thin: it calls the plain function of its stage.

Heavy imports (ultralytics, prefect, wandb) happen inside commands so `phase2 --help` is fast
and the offline environment is configured first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from phase2.infra.settings import PROJECT_ROOT, configure_environment

app = typer.Typer(help="Phase 2 training pipeline for the site-inspection detector.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models: list, show, download, promote.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.callback()
def _setup() -> None:
    configure_environment()


# --- dataset validation (phase2/dataset/) ---


@app.command("validate")
def validate(
    data_yaml: Annotated[Path, typer.Argument(help="The dataset's data.yaml.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    imgsz: Annotated[int, typer.Option(help="Training image size the boxes are checked at.")] = 640,
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate Hamming distance (-1: off).")] = 4,
    out: Annotated[
        Path | None, typer.Option(help="Also write report.json, files.csv, summary.md, class_counts.png here.")
    ] = None,
    recipe: Annotated[
        str, typer.Option(help="Recipe whose class names and minority class the dataset is checked against.")
    ] = "phase2-seed",
) -> None:
    """Validate a YOLO dataset (read-only); exit 1 when it has errors."""
    from phase2.dataset.validation import validate_dataset
    from phase2.infra.settings import state_dir
    from phase2.training.recipe import RecipeError, load_recipe

    try:
        settings = load_recipe(recipe)
    except RecipeError as error:
        _fail(error)
    report = validate_dataset(
        data_yaml,
        imgsz=imgsz,
        phash_threshold=phash_threshold,
        expected_names=settings.classes,
        minority_class=settings.minority_class,
        minority_val_target=settings.rebalance.targets.get(settings.minority_class, 18),
        cache_dir=state_dir() / "validation-cache",
    )
    if out is not None:
        report.write(out)
    typer.echo(report.model_dump_json(indent=2) if as_json else report.summary_markdown())
    raise typer.Exit(1 if report.errors() else 0)


# --- rebalancing (phase2/dataset/rebalance.py) ---


@app.command("rebalance")
def rebalance(
    data_yaml: Annotated[Path, typer.Argument(help="The source dataset's data.yaml (never modified).")],
    target: Annotated[list[str], typer.Option(help="Val instances wanted, CLASS=N (repeatable).")],
    out: Annotated[Path, typer.Option(help="Output dir: data.yaml, image lists, manifest, balance table/plot.")],
    seed: Annotated[int, typer.Option(help="Tie-break seed of the selection.")] = 0,
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate Hamming distance (-1: exact only).")] = 4,
    leak_priority: Annotated[str, typer.Option(help="Split that keeps a leaked group, first wins.")] = "train,val,test",
    move_test: Annotated[bool, typer.Option(help="Also take groups from test to reach the targets.")] = False,
) -> None:
    """Repair cross-split duplicate leaks, then raise val class instances to targets (whole groups only)."""
    from phase2.dataset.layout import DatasetConfigError
    from phase2.dataset.rebalance import DatasetError, RebalanceImpossible, parse_targets, rebalance_validation

    try:
        result = rebalance_validation(
            data_yaml,
            out,
            parse_targets(target),
            seed=seed,
            phash_threshold=phash_threshold,
            leak_priority=[s.strip() for s in leak_priority.split(",")],
            move_test=move_test,
        )
    except (RebalanceImpossible, DatasetError, DatasetConfigError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"version {result.version_id} (source {result.source_version_id}): {result.data_yaml}")
    typer.echo(f"repaired leaks: {len(result.repaired_leaks)}, moved groups: {len(result.moved_groups)}")
    typer.echo(result.balance_csv.read_text())


# --- training history and selection (phase2/training/history.py) ---


@app.command("history")
def history(
    results_csv: Annotated[Path, typer.Argument(help="An Ultralytics results.csv (args.yaml next to it is read too).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience (default: args.yaml).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Planned epochs (default: args.yaml).")] = None,
) -> None:
    """Summarize a training history: best/worst/mean/last per metric and why training stopped."""
    from phase2.training.history import summarize_history

    try:
        summary = summarize_history(results_csv, patience=patience, epochs=epochs)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(summary.model_dump_json(indent=2) if as_json else summary.to_markdown())


# --- model registry (phase2/registry/) ---


def _registry(ref: str = ""):
    """(Registry for the name in ``NAME:REF`` or the default name, the part after the name)."""
    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.infra.settings import DEFAULT_MODEL_NAME
    from phase2.registry.registry import Registry
    from phase2.registry.storage import ObjectStore

    name, sep, rest = ref.partition(":")
    store = ObjectStore(resolve_s3_settings())
    return (Registry(store, name), rest) if sep else (Registry(store, DEFAULT_MODEL_NAME), ref)


def _fail(error: Exception) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(1)


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option(help="Model name (default: site-inspection-detector).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests as JSON.")] = False,
) -> None:
    """Registered versions with their aliases and headline metrics."""
    import json

    from phase2.registry.storage import StorageError

    try:
        registry, _ = _registry(f"{name}:" if name else "")
        versions, aliases = registry.list_versions(), registry.aliases()
    except StorageError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps({"aliases": aliases, "versions": [v.model_dump() for v in versions]}, indent=2))
        return
    by_version: dict[int, list[str]] = {}
    for alias, number in sorted(aliases.items()):
        by_version.setdefault(number, []).append(alias)

    def metric(version, split: str, *path: str) -> str:
        node = version.metrics.get(split, {})
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return f"{node:.4f}" if isinstance(node, (int, float)) else "-"

    typer.echo(f"{registry.name}: {len(versions)} version(s)")
    typer.echo(f"{'version':>7}  {'created_at':25}  {'val mAP50-95':>12}  {'test mAP50-95':>13}  {'code':12}  aliases")
    for v in versions:
        typer.echo(
            f"{'v' + str(v.version):>7}  {v.created_at:25}  {metric(v, 'val', 'overall', 'mAP50-95'):>12}  "
            f"{metric(v, 'test', 'overall', 'mAP50-95'):>13}  {v.code_version[:12]:12}  "
            f"{', '.join(by_version.get(v.version, []))}"
        )


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION|ALIAS, e.g. site-inspection-detector:production or v3.")],
) -> None:
    """The full manifest of one version (files with sha256, metrics, lineage) and its aliases."""
    import json

    from phase2.registry.storage import StorageError

    try:
        registry, rest = _registry(ref)
        version = registry.get(rest)
        aliases = sorted(a for a, n in registry.aliases().items() if n == version.version)
    except StorageError as error:
        _fail(error)
    typer.echo(
        json.dumps(
            {
                **version.model_dump(),
                "aliases": aliases,
                "uri": registry.version_uri(version.version),
            },
            indent=2,
        )
    )


@models_app.command("download")
def models_download(
    ref: Annotated[str, typer.Argument(help="NAME:ALIAS or NAME:VERSION.")],
    to: Annotated[Path, typer.Option("--to", help="Directory; the model lands in DIR/NAME-vN/.")],
) -> None:
    """Download a version, verifying every file's sha256 (a tampered file is refused, nothing half-written kept)."""
    from phase2.registry.storage import StorageError

    try:
        registry, rest = _registry(ref)
        folder = registry.download(rest, to)
    except StorageError as error:
        _fail(error)
    typer.echo(str(folder))


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
) -> None:
    """Move an alias to a version by hand (compare-and-swap; the version must be complete)."""
    from phase2.registry.storage import StorageError

    try:
        registry, rest = _registry(ref)
        previous = registry.aliases().get(alias)
        version = registry.set_alias(alias, rest)
    except StorageError as error:
        _fail(error)
    was = f"v{previous}" if previous else "unset"
    typer.echo(f"{registry.name}: {alias} {was} -> v{version.version}")


# --- services, deploy, run (phase2/infra/seaweedfs.py, phase2/infra/prefect_stack.py) ---


def _stack(ui: bool = True):
    from phase2.infra.prefect_stack import LocalStack

    return LocalStack(ui=ui)


@app.command("up")
def up(deploy: Annotated[bool, typer.Option(help="Also create the pool and apply prefect.yaml.")] = True) -> None:
    """Start the local stack: SeaweedFS (S3), Prefect server + UI, process pool, deployments, worker."""
    stack = _stack()
    stack.up(deploy=deploy)
    _print_status(stack)
    typer.echo(f"\nexport PREFECT_API_URL={stack.server.api_url}  # to use the prefect CLI against it")


@app.command("down")
def down() -> None:
    """Stop everything `up` started (idempotent). Data stays in the state dir."""
    stack = _stack()
    stack.down()
    typer.echo(f"stopped; state kept in {stack.state}")


@app.command("status")
def status() -> None:
    """What is running, where, and where state lives."""
    _print_status(_stack())


def _print_status(stack) -> None:
    import json

    typer.echo(json.dumps(stack.status(), indent=2))


@app.command("deploy")
def deploy() -> None:
    """Work pool + deployments from prefect.yaml against PREFECT_API_URL (local server if unset)."""
    import os

    from phase2.infra.prefect_stack import LocalStack

    stack = LocalStack()
    if os.environ.get("PREFECT_API_URL"):  # a remote server or Prefect Cloud: don't start ours
        env = {
            **os.environ,
            **configure_environment(),
            "PHASE2_WORK_POOL": stack.pool,
            "PHASE2_PROJECT_DIR": str(PROJECT_ROOT),
        }
        stack.deploy(env)
    else:
        stack.up()
    typer.echo(f"deployments applied; start a worker with: prefect worker start --pool {stack.pool}")


@app.command("lint")
def lint(
    recipe: Annotated[str, typer.Argument(help="Recipe name in configs/ or a path.")],
    native: Annotated[int | None, typer.Option(help="Largest native image side, px.")] = None,
) -> None:
    """Recipe settings that silently do something else than intended."""
    from phase2.training.recipe import RecipeError, lint_recipe, load_recipe

    try:
        warnings = lint_recipe(load_recipe(recipe), native_imgsz=native)
    except RecipeError as error:
        _fail(error)
    for w in warnings:
        typer.echo(f"{w.code}  {w.field}: {w.message}")
    if not warnings:
        typer.echo("no findings")


@app.command("run")
def run(
    data: Annotated[Path | None, typer.Option(help="data.yaml; default: a generated synthetic demo set.")] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Start weights (path, s3:// or registry ref); "
            "default: a from-scratch baseline trained on the demo set."
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(help="Recipe name or path (default phase2-demo without --data, phase2-seed with it)."),
    ] = None,
    keep_up: Annotated[bool, typer.Option(help="Leave the services this command started running afterwards.")] = False,
    timeout: Annotated[int, typer.Option(help="Seconds to wait for the flow run.")] = 6 * 3600,
) -> None:
    """Start the stack (or use the running one), run `prefect deployment run phase2/train --watch`,
    print where results are. Afterwards it stops only what it started: a stack that was already
    up (`phase2 up`) stays up."""
    from phase2.demo import prepare_demo, trigger_training

    if data is None:
        data, demo_baseline = prepare_demo()
        baseline = baseline or str(demo_baseline)
        recipe = recipe or "phase2-demo"
    if baseline is None:
        typer.echo("error: --baseline is required with --data (weights to fine-tune from)", err=True)
        raise typer.Exit(2)
    stack = _stack(ui=False)
    try:
        env = stack.up()
        summary = trigger_training(
            env, data=Path(data).resolve(), baseline=baseline, recipe=recipe or "phase2-seed", timeout=timeout
        )
    finally:
        if not keep_up:
            stack.stop_started()
    typer.echo("\n".join(f"{k:>16}: {v}" for k, v in summary.items()))
    if summary.get("state") != "COMPLETED":
        raise typer.Exit(1)


# --- worker-death recovery (phase2/infra/recovery.py) ---


@app.command("recover")
def recover(dry_run: Annotated[bool, typer.Option(help="Only list the orphaned runs.")] = False) -> None:
    """Mark phase2 runs whose worker/flow-run process died as Crashed, freeing the concurrency slot."""
    from phase2.infra.recovery import recover_orphaned_runs

    orphans = recover_orphaned_runs(dry_run=dry_run)
    for orphan in orphans:
        typer.echo(
            f"{'orphaned' if dry_run else 'crashed'}: {orphan.name} ({orphan.id}) "
            f"was {orphan.state}, pid {orphan.infrastructure_pid} gone"
        )
    if not orphans:
        typer.echo("no orphaned runs")


# --- review report (phase2/report/) ---


@app.command("report")
def report_command(
    run: Annotated[str, typer.Argument(help="Run key (folder under <state>/pipeline) or Prefect flow run id.")],
    out: Annotated[Path | None, typer.Option(help="Also copy the HTML here.")] = None,
    open_it: Annotated[bool, typer.Option("--open", help="Open it in the default browser.")] = False,
    rebuild: Annotated[bool, typer.Option(help="Build it again from the run's files.")] = False,
) -> None:
    """The self-contained HTML review report of a past run: local copy, else S3, else built."""
    import shutil
    import webbrowser

    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.registry.storage import ObjectStore
    from phase2.report.inputs import ReportError
    from phase2.report.past_runs import report_for_run

    try:
        html = report_for_run(run, rebuild=rebuild, store=ObjectStore(resolve_s3_settings()))
    except ReportError as error:
        _fail(error)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(html, out)
        html = out
    typer.echo(str(html))
    if open_it:
        webbrowser.open(html.resolve().as_uri())


# --- W&B (phase2/infra/tracking.py) ---
wandb_app = typer.Typer(help="Weights & Biases: publish offline runs once online.", no_args_is_help=True)
app.add_typer(wandb_app, name="wandb")


@wandb_app.command("publish")
def wandb_publish(
    collection: Annotated[
        str, typer.Option(help="W&B Registry collection for the model artifacts.")
    ] = "site-inspection-detector",
) -> None:
    """Sync offline runs and link their models to the W&B Registry (idempotent; needs WANDB_API_KEY)."""
    import os

    from phase2.infra.tracking import PublishError, publish_offline_runs

    try:
        published = publish_offline_runs(Path(os.environ["WANDB_DIR"]), registry_collection=collection)
    except PublishError as error:
        _fail(error)
    typer.echo("\n".join(published) or "nothing new to publish")


if __name__ == "__main__":  # pragma: no cover
    app()
