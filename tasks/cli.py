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

# --- rebalancing (tasks/rebalance.py) ---

# --- training history and selection (tasks/selection.py) ---

# --- model registry (tasks/registry.py) ---

# --- services, deploy, run (tasks/services.py, tasks/prefect_stack.py) ---


if __name__ == "__main__":  # pragma: no cover
    app()
