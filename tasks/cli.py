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
