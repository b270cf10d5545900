"""`phase2` command line. Each command is thin: it calls the plain function of its stage.

Heavy imports (ultralytics, prefect, wandb) happen inside commands so `phase2 --help` is fast
and the offline environment is configured first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tasks.settings import configure_environment

app = typer.Typer(help="Phase 2 training pipeline for the site-inspection detector.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models: list, show, download, promote.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.callback()
def _setup() -> None:
    configure_environment()


# --- dataset validation (tasks/dataset_validation.py) ---


@app.command("validate")
def validate(
    data_yaml: Annotated[Path, typer.Argument(help="The dataset's data.yaml.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    imgsz: Annotated[int, typer.Option(help="Training image size the boxes are checked at.")] = 640,
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate Hamming distance (-1: off).")] = 4,
    out: Annotated[Optional[Path], typer.Option(help="Also write report.json, files.csv, summary.md, "
                                                     "class_counts.png here.")] = None,
) -> None:
    """Validate a YOLO dataset (read-only); exit 1 when it has errors."""
    from tasks.dataset_validation import validate_dataset

    report = validate_dataset(data_yaml, imgsz=imgsz, phash_threshold=phash_threshold)
    if out is not None:
        report.write(out)
    typer.echo(report.model_dump_json(indent=2) if as_json else report.summary_markdown())
    raise typer.Exit(1 if report.errors() else 0)

# --- rebalancing (tasks/rebalance.py) ---


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
    from tasks.dataset_validation import DatasetConfigError
    from tasks.rebalance import DatasetError, RebalanceImpossible, parse_targets, rebalance_validation

    try:
        result = rebalance_validation(
            data_yaml, out, parse_targets(target), seed=seed, phash_threshold=phash_threshold,
            leak_priority=[s.strip() for s in leak_priority.split(",")], move_test=move_test,
        )
    except (RebalanceImpossible, DatasetError, DatasetConfigError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(f"version {result.version_id} (source {result.source_version_id}): {result.data_yaml}")
    typer.echo(f"repaired leaks: {len(result.repaired_leaks)}, moved groups: {len(result.moved_groups)}")
    typer.echo(result.balance_csv.read_text())

# --- training history and selection (tasks/selection.py) ---


@app.command("history")
def history(
    results_csv: Annotated[Path, typer.Argument(help="An Ultralytics results.csv (args.yaml next to it is read too).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience (default: args.yaml).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Planned epochs (default: args.yaml).")] = None,
) -> None:
    """Summarize a training history: best/worst/mean/last per metric and why training stopped."""
    from tasks.selection import summarize_history

    try:
        summary = summarize_history(results_csv, patience=patience, epochs=epochs)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(summary.model_dump_json(indent=2) if as_json else summary.to_markdown())

# --- model registry (tasks/registry.py) ---

# --- services, deploy, run (tasks/services.py, tasks/prefect_stack.py) ---


if __name__ == "__main__":  # pragma: no cover
    app()
