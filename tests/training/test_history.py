"""Training-history summary, checked on the guide's own 21-epoch table written as results.csv."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from phase2.training.history import summarize_history, ultralytics_fitness_formula, ultralytics_fitness_weights

# Ultralytics' header; older versions pad names with spaces, which the parser must strip.
HEADER = [
    "epoch",
    "time",
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "lr/pg0",
    "lr/pg1",
    "lr/pg2",
]


def guide_epoch_table(guide_file: Path) -> pd.DataFrame:
    """The rows of the guide's section 'COMPLETE EPOCH-BY-EPOCH RESULTS', as numbers."""
    text = guide_file.read_text(encoding="utf-8")
    section = text.split("COMPLETE EPOCH-BY-EPOCH RESULTS", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [re.sub(r"[*%⭐\s]", "", c) for c in line.strip().strip("|").split("|")]
        if cells and cells[0].isdigit():
            rows.append([float(c) for c in cells])
    columns = ["epoch", "mAP50", "mAP50-95", "precision", "recall", "train_loss", "val_loss", "time"]
    table = pd.DataFrame(rows, columns=columns)
    table["epoch"] = table["epoch"].astype(int)
    return table


def write_results_csv(guide: pd.DataFrame, path: Path) -> Path:
    """The guide's table as Ultralytics would write it (fractions, not percent; padded header).

    The guide gives only the total train/val loss: it goes into the box-loss column and the
    other loss components are 0, so the per-row sum is the guide's number.
    """
    csv = pd.DataFrame(
        {
            "epoch": guide["epoch"],
            "time": guide["time"],
            "train/box_loss": guide["train_loss"],
            "train/cls_loss": 0.0,
            "train/dfl_loss": 0.0,
            "metrics/precision(B)": guide["precision"] / 100,
            "metrics/recall(B)": guide["recall"] / 100,
            "metrics/mAP50(B)": guide["mAP50"] / 100,
            "metrics/mAP50-95(B)": guide["mAP50-95"] / 100,
            "val/box_loss": guide["val_loss"],
            "val/cls_loss": 0.0,
            "val/dfl_loss": 0.0,
            "lr/pg0": 0.0675,
            "lr/pg1": 0.0001,
            "lr/pg2": 0.0001,
        }
    )
    csv.columns = [f"{c:>22}" for c in HEADER]
    csv.to_csv(path, index=False)
    return path


@pytest.fixture
def guide_run(tmp_path, seed_guide) -> tuple[pd.DataFrame, Path]:
    guide = guide_epoch_table(seed_guide)
    run = tmp_path / "train"
    run.mkdir()
    # The guide's recipe: epochs=80, patience=15 (as Ultralytics writes them to args.yaml).
    (run / "args.yaml").write_text("task: detect\nepochs: 80\npatience: 15\nconf: 0.25\n")
    return guide, write_results_csv(guide, run / "results.csv")


def test_guide_history_best_epoch_stop_reason_and_means(guide_run):
    guide, results_csv = guide_run
    assert len(guide) == 21 and list(guide["epoch"]) == list(range(1, 22))
    assert "   metrics/mAP50(B)" in results_csv.read_text().splitlines()[0]  # padded names really there

    summary = summarize_history(results_csv)

    assert summary.epochs_run == 21
    assert summary.planned_epochs == 80 and summary.patience == 15  # from args.yaml
    assert summary.metrics["mAP50"].best_epoch == 6
    assert summary.metrics["mAP50-95"].best_epoch == 6
    assert summary.best_epoch == 6
    assert summary.stop_reason == "patience 15 after epoch 6"
    for name in ("precision", "recall", "mAP50", "mAP50-95"):
        stats = summary.metrics[name]
        values = guide[name] / 100
        assert stats.mean == pytest.approx(values.mean(), abs=1e-9)
        assert stats.best == pytest.approx(values.max()) and stats.worst == pytest.approx(values.min())
        assert stats.last == pytest.approx(values.iloc[-1])
    assert summary.metrics["precision"].best_epoch == 21
    assert summary.metrics["mAP50"].worst_epoch == 1
    assert summary.metrics["train_loss"].best_epoch == 14  # lowest loss is best
    assert summary.metrics["val_loss"].best_epoch == 10
    assert summary.metrics["train_loss"].mean == pytest.approx(guide["train_loss"].mean())
    # The guide's own summary table says mAP50 averages 85.95%: the data say otherwise.
    assert round(guide["mAP50"].mean(), 2) != 85.95

    md = summary.to_markdown()
    assert "patience 15 after epoch 6" in md and "| mAP50 | 0.8952 (6)" in md


def test_stop_reason_epochs_reached_and_explicit_arguments(guide_run):
    guide, results_csv = guide_run
    # Planned 21 epochs: training simply ran them all.
    assert summarize_history(results_csv, epochs=21).stop_reason == "epochs reached (21)"
    # Patience 50 can't explain stopping at 21 of 80.
    reason = summarize_history(results_csv, patience=50).stop_reason
    assert reason.startswith("stopped at epoch 21 of 80 without reaching patience")
    (results_csv.parent / "args.yaml").unlink()
    assert summarize_history(results_csv).stop_reason.startswith("unknown: patience and planned epochs unknown")
    assert summarize_history(results_csv, patience=15).stop_reason == "patience 15 after epoch 6"


def test_bad_results_csv_names_file_and_line(tmp_path):
    missing = tmp_path / "results.csv"
    with pytest.raises(FileNotFoundError, match="results.csv"):
        summarize_history(missing)
    missing.write_text("epoch,time\n1,2.0\n")
    with pytest.raises(ValueError, match=r"line 1 \(header\).*metrics/mAP50\(B\)"):
        summarize_history(missing)
    header = ",".join(HEADER)
    missing.write_text(f"{header}\n1,1,1,1,1,0.5,0.5,0.5,0.5,1,1,1,0,0,0\n2,2,1,1,1,oops,0.5,0.5,0.5,1,1,1,0,0,0\n")
    with pytest.raises(ValueError, match=r"line 3, column 'metrics/precision\(B\)'"):
        summarize_history(missing)


def test_fitness_formula_read_from_installed_ultralytics():
    import ultralytics
    from ultralytics.utils.metrics import Metric

    weights = ultralytics_fitness_weights()
    probe = Metric()
    probe.mean_results = lambda: [0.2, 0.3, 0.5, 0.4]
    expected = 0.2 * weights["precision"] + 0.3 * weights["recall"] + 0.5 * weights["mAP50"] + 0.4 * weights["mAP50-95"]
    assert probe.fitness() == pytest.approx(expected)
    formula = ultralytics_fitness_formula()
    assert ultralytics.__version__ in formula
    if ultralytics.__version__ == "8.4.190":
        assert weights == {"precision": 0.0, "recall": 0.0, "mAP50": 0.0, "mAP50-95": 1.0}
        assert formula.startswith("mAP50-95 (")


def test_cli_history_markdown_and_json(guide_run):
    from phase2.cli import app

    _, results_csv = guide_run
    runner = CliRunner()
    md = runner.invoke(app, ["history", str(results_csv)])
    assert md.exit_code == 0, md.output
    assert "patience 15 after epoch 6" in md.output
    js = runner.invoke(app, ["history", str(results_csv), "--json"])
    assert js.exit_code == 0, js.output
    data = json.loads(js.output)
    assert data["best_epoch"] == 6 and data["metrics"]["mAP50-95"]["best_epoch"] == 6
    bad = runner.invoke(app, ["history", str(results_csv.parent / "nope.csv")])
    assert bad.exit_code != 0 and "nope.csv" in bad.output
