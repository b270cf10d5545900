"""Training history: what an Ultralytics ``results.csv`` says about a run.

:func:`summarize_history` gives best/worst/mean/last per metric and why training stopped;
:func:`ultralytics_fitness_formula` states the fitness that picks ``best.pt`` in the installed
Ultralytics. Ultralytics is imported inside functions: call
``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, Field

# results.csv column -> our metric name; higher is better for all of them.
METRIC_COLUMNS = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "mAP50": "metrics/mAP50(B)",
    "mAP50-95": "metrics/mAP50-95(B)",
}


# --------------------------------------------------------------------------- fitness


def ultralytics_fitness_weights() -> dict[str, float]:
    """Weights the installed Ultralytics gives P, R, mAP50, mAP50-95 in its detection fitness.

    Measured by evaluating ``Metric.fitness`` on unit inputs, so it follows the installed version.
    """
    from ultralytics.utils.metrics import Metric

    class Probe(Metric):  # fitness() is a weighted sum of mean_results()
        def __init__(self, unit: list[float]) -> None:
            super().__init__()
            self.unit = unit

        def mean_results(self) -> list[float]:
            return self.unit

    names = list(METRIC_COLUMNS)
    return {name: float(Probe([float(i == j) for j in range(len(names))]).fitness()) for i, name in enumerate(names)}


def ultralytics_fitness_formula() -> str:
    """The installed Ultralytics' detection fitness, e.g. ``"mAP50-95"`` or ``"0.1*mAP50 + 0.9*mAP50-95"``."""
    import ultralytics

    terms = [
        name if math.isclose(w, 1.0) else f"{w:g}*{name}"
        for name, w in ultralytics_fitness_weights().items()
        if not math.isclose(w, 0.0, abs_tol=1e-12)
    ]
    return (" + ".join(terms) or "0") + f" (ultralytics {ultralytics.__version__})"


# --------------------------------------------------------------------------- history


class MetricStats(BaseModel):
    """One metric over the epochs of a run. Epochs are 1-based, as in results.csv."""

    best: float
    best_epoch: int
    worst: float
    worst_epoch: int
    mean: float
    last: float
    higher_is_better: bool = True


class HistorySummary(BaseModel):
    source: Path
    epochs_run: int
    planned_epochs: int | None
    patience: int | None
    fitness_formula: str
    best_epoch: int = Field(description="best epoch by fitness: what best.pt and early stopping follow")
    stop_reason: str
    metrics: dict[str, MetricStats]

    def to_markdown(self) -> str:
        lines = [
            f"### Training history: `{self.source}`",
            "",
            f"- epochs run: {self.epochs_run}" + (f" of {self.planned_epochs} planned" if self.planned_epochs else ""),
            f"- stop reason: {self.stop_reason}",
            f"- best epoch by fitness ({self.fitness_formula}): {self.best_epoch}",
            "",
            "| metric | best (epoch) | worst (epoch) | mean | last |",
            "|---|---|---|---|---|",
        ]
        for name, s in self.metrics.items():
            lines.append(
                f"| {name} | {s.best:.4f} ({s.best_epoch}) | {s.worst:.4f} ({s.worst_epoch}) "
                f"| {s.mean:.4f} | {s.last:.4f} |"
            )
        return "\n".join(lines) + "\n"


def read_results_csv(results_csv: Path) -> pd.DataFrame:
    """results.csv with stripped column names (some Ultralytics versions pad them with spaces)."""
    results_csv = Path(results_csv)
    if not results_csv.is_file():
        raise FileNotFoundError(f"{results_csv}: no such file (expected an Ultralytics results.csv)")
    try:
        table = pd.read_csv(results_csv, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{results_csv}: empty file (pass the results.csv an Ultralytics training writes, one row per epoch)"
        ) from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ValueError(
            f"{results_csv}: not a CSV text file ({type(exc).__name__}) "
            "(pass the results.csv an Ultralytics training writes)"
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ["epoch", *METRIC_COLUMNS.values()] if c not in table.columns]
    if missing:
        raise ValueError(
            f"{results_csv}: line 1 (header) lacks column(s) {missing}; found {list(table.columns)}. "
            "Pass the results.csv written by an Ultralytics detection training."
        )
    if table.empty:
        raise ValueError(f"{results_csv}: header only, no epoch rows (did training run a full epoch?)")
    for column in table.columns:
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = table[column].notna() & numeric.isna()
        if bad.any():
            row = int(bad.idxmax())
            raise ValueError(
                f"{results_csv}: line {row + 2}, column {column!r}: {table[column][row]!r} is not a number"
            )
        table[column] = numeric
    table["epoch"] = table["epoch"].astype(int)
    return table


def _loss_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in table.columns if c.startswith(prefix) and c.endswith("_loss")]


def _stats(epochs: pd.Series, values: pd.Series, higher_is_better: bool) -> MetricStats:
    # Ties go to the later epoch, as Ultralytics' best.pt and EarlyStopping do (>=).
    order = values[::-1]
    best_i = order.idxmax() if higher_is_better else order.idxmin()
    worst_i = values.idxmin() if higher_is_better else values.idxmax()
    return MetricStats(
        best=float(values[best_i]),
        best_epoch=int(epochs[best_i]),
        worst=float(values[worst_i]),
        worst_epoch=int(epochs[worst_i]),
        mean=float(values.mean()),
        last=float(values.iloc[-1]),
        higher_is_better=higher_is_better,
    )


def summarize_history(results_csv: Path, *, patience: int | None = None, epochs: int | None = None) -> HistorySummary:
    """Best/worst/mean/last of each metric and why training stopped.

    ``patience``/``epochs`` default to the ``args.yaml`` next to results.csv when present.
    """
    results_csv = Path(results_csv)
    table = read_results_csv(results_csv)
    args_yaml = results_csv.parent / "args.yaml"
    if args_yaml.is_file() and (patience is None or epochs is None):
        args = _read_args_yaml(args_yaml)
        patience = args.get("patience") if patience is None else patience
        epochs = args.get("epochs") if epochs is None else epochs

    weights = ultralytics_fitness_weights()
    series = {name: table[column] for name, column in METRIC_COLUMNS.items()}
    series["fitness"] = sum(weights[name] * table[col].fillna(0) for name, col in METRIC_COLUMNS.items())
    metrics = {name: _stats(table["epoch"], values, True) for name, values in series.items()}
    for prefix, name in (("train/", "train_loss"), ("val/", "val_loss")):
        if columns := _loss_columns(table, prefix):
            metrics[name] = _stats(table["epoch"], table[columns].sum(axis=1), False)

    epochs_run = int(table["epoch"].iloc[-1])
    best_epoch = metrics["fitness"].best_epoch
    stop_reason = _stop_reason(epochs_run, best_epoch, patience, epochs)
    return HistorySummary(
        source=results_csv,
        epochs_run=epochs_run,
        planned_epochs=epochs,
        patience=patience,
        fitness_formula=ultralytics_fitness_formula(),
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        metrics=metrics,
    )


def _read_args_yaml(args_yaml: Path) -> dict[str, Any]:
    """Ultralytics' args.yaml; errors name the file and the way around it."""
    fix = "fix it, or pass --patience and --epochs"
    try:
        args = yaml.safe_load(args_yaml.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{args_yaml}: not a text YAML file ({fix})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ValueError(f"{args_yaml}{where}: not valid YAML ({fix})") from None
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError(f"{args_yaml}: expected a mapping of training arguments ({fix})")
    for key in ("patience", "epochs"):
        if args.get(key) is not None and not (isinstance(args[key], int) and args[key] > 0):
            raise ValueError(f"{args_yaml}: {key}: {args[key]!r} is not a positive integer ({fix})")
    return args


def _stop_reason(epochs_run: int, best_epoch: int, patience: int | None, planned: int | None) -> str:
    early = patience is not None and epochs_run == best_epoch + patience
    if early and (planned is None or epochs_run < planned):
        return f"patience {patience} after epoch {best_epoch}"
    if planned is not None and epochs_run >= planned:
        return f"epochs reached ({epochs_run})"
    if planned is None or patience is None:
        # Without args.yaml nothing says how many epochs were planned or what patience was:
        # "epochs reached" would be a guess (the guide's run stopped by patience at 21 of 80).
        unknown = " and ".join(n for n, v in (("patience", patience), ("planned epochs", planned)) if v is None)
        return (
            f"unknown: {unknown} unknown (no args.yaml next to results.csv); "
            "pass --patience and --epochs to tell early stopping from the last epoch"
        )
    # Neither rule explains it: a time limit, an interruption, or a run still in progress.
    return (
        f"stopped at epoch {epochs_run} of {planned} without reaching patience "
        f"(best epoch {best_epoch}, patience {patience}): time limit, interruption or still running"
    )
