"""The review report, built from a real tiny pipeline run (conftest.py: the phase2 flow in-process
on a small copy of the real dataset, real SeaweedFS, W&B offline), and the W&B Report spec (no network)."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import wandb_workspaces.reports.v2 as wr
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from phase2.cli import app
from phase2.dataset.layout import resolve_split_images
from phase2.infra.files import sha256_file
from phase2.infra.tracking import offline_history
from phase2.report.html import build_html_report
from phase2.report.inputs import PER_CLASS_KEYS, ReportError
from phase2.report.past_runs import report_for_run
from phase2.report.wandb_report import WANDB_WHAT_CHANGED_TABLE, wandb_report_spec
from phase2.runs import RunLayout
from phase2.training.history import summarize_history


class Page(HTMLParser):
    """Sections, images, the per-class cells and the text of elements with an id."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.cells: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.by_id: dict[str, str] = {}
        self.external: list[str] = []
        self._open: list[tuple[str, dict]] = []
        self._text: dict[int, list[str]] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http://", "https://", "//")) and tag != "a":
                self.external.append(attrs[key])
        if tag in ("script", "link"):
            self.external.append(tag)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        if tag in ("img", "meta", "br", "hr", "link", "input"):  # void elements: no end tag
            return
        self._open.append((tag, attrs))
        self._text[len(self._open)] = []

    def handle_endtag(self, tag):
        if not self._open or self._open[-1][0] != tag:
            return
        _, attrs = self._open.pop()
        text = "".join(self._text.pop(len(self._open) + 1, []))
        if self._open:
            self._text[len(self._open)].append(text)
        if "data-metric" in attrs:
            self.cells[(attrs["data-class"], attrs["data-model"], attrs["data-metric"])] = (attrs["data-value"], text)
        if "id" in attrs:
            self.by_id[attrs["id"]] = text

    def handle_data(self, data):
        if self._open:
            self._text[len(self._open)].append(data)


def expected_cells(metrics: dict) -> dict[tuple[str, str], float | None]:
    cells = {(name, key): values[key] for name, values in metrics["per_class"].items() for key in PER_CLASS_KEYS}
    overall = metrics["overall"]
    cells.update(
        {
            ("all", "precision"): overall["precision"],
            ("all", "recall"): overall["recall"],
            ("all", "AP50"): overall["mAP50"],
            ("all", "AP50-95"): overall["mAP50-95"],
        }
    )
    return cells


def assert_column(page: Page, model: str, metrics: dict) -> None:
    for (name, key), value in expected_cells(metrics).items():
        attr, text = page.cells[(name, model, key)]
        if value is None:
            assert (attr, text) == ("", "–"), (name, model, key)
        else:
            assert float(attr) == value and text == f"{value:.4f}", (name, model, key, attr, text, value)


def test_report_sections_from_a_real_run(pipeline_run):
    layout, version = pipeline_run["layout"], pipeline_run["version"]
    html = layout.report_html
    page = Page(html.read_text())

    assert page.sections == [
        "promotion",
        "dataset",
        "training",
        "selection",
        "per-class",
        "plots",
        "detections",
        "label-review",
        "timings",
    ]
    assert page.external == []  # self-contained: no scripts, stylesheets or remote images
    assert all(img["src"].startswith("data:image/") and len(img["src"]) > 1000 for img in page.images)
    titles = [img["data-name"] for img in page.images]
    assert "Training curves per epoch" in titles
    assert "Class counts per split, before and after rebalancing" in titles
    assert "PR curve, val split" in titles and "Confusion matrix, val split" in titles

    # Stored in S3 with the run, byte for byte; the summary points at it.
    store = pipeline_run["store"]
    key = f"runs/{layout.run_key}/report/report.html"
    assert key == layout.report_html_key
    assert store.head(key)["sha256"] == sha256_file(html)
    assert pipeline_run["summary"]["report"] == store.uri(key)

    # Training: best epoch and stop reason are those of the history.
    history = summarize_history(layout.stage_dir("train") / "results.csv")
    assert page.by_id["best-epoch"] == str(history.best_epoch)
    assert page.by_id["stop-reason"] == history.stop_reason

    # Dataset: every finding code is counted; leaks repaired as the manifest says.
    findings = json.loads((layout.stage_dir("validation") / "report.json").read_text())["findings"]
    for code in {f["code"] for f in findings}:
        assert code in page.by_id["findings"]
    manifest = json.loads((layout.stage_dir("dataset") / "manifest.json").read_text())
    for leak in manifest["repaired_leaks"]:
        assert leak["group_id"] in page.by_id["leaks-repaired"]

    # Selection: every candidate re-evaluated is listed, the winner named, with the policy and
    # protocol of the selection's structured result.
    candidates = pd.read_csv(layout.stage_dir("selection") / "candidates.csv")
    assert all(name in page.by_id["candidates"] for name in candidates["candidate"])
    assert page.by_id["winner"] == Path(pipeline_run["summary"]["selected"]).stem
    selection = json.loads((layout.stage_dir("selection") / "selection.json").read_text())
    assert selection["policy_description"] in page.by_id["selection"]
    assert f"imgsz {selection['val']['protocol']['imgsz']}" in page.by_id["selection"]

    # Per class: the new model's numbers are the registry version's; production and baseline
    # are the evaluations under the same protocol.
    assert_column(page, "new", version.metrics["val"])
    assert_column(page, "production", json.loads((layout.stage_dir("production-eval") / "metrics.json").read_text()))
    assert_column(
        page, "baseline", json.loads((layout.stage_dir("report") / "baseline-eval" / "metrics.json").read_text())
    )

    # Detections: one tile per val image (up to 12), minority-class images first.
    tiles = json.loads((layout.stage_dir("report") / "detections" / "detections.json").read_text())["tiles"]
    val_images = (layout.stage_dir("dataset") / "val.txt").read_text().split()
    assert len(tiles) == min(12, len(val_images))
    has_minority = [pipeline_run["minority_class"] in t["ground_truth"] for t in tiles]
    assert any(has_minority) and has_minority == sorted(has_minority, reverse=True)
    assert len([img for img in page.images if img.get("class") == "tile"]) == len(tiles)

    # Promotion and timings.
    promotion = json.loads((layout.stage_dir("report") / "promotion.json").read_text())
    assert ("PROMOTED" if promotion["promote"] else "KEPT") in page.by_id["promotion"]
    assert pipeline_run["summary"]["promoted"] == promotion["promote"]
    timings = page.by_id["timings-table"]
    tasks = "validate_dataset rebalance_validation fine_tune select_checkpoint register_model promote_model"
    tasks += " build_report"
    assert all(task in timings for task in tasks.split()), timings


def test_prefect_artifacts_link_the_report_and_hold_the_tables(pipeline_run):
    model_name = pipeline_run["version"].name
    key = f"review-report-{model_name}"
    with temporary_settings({PREFECT_API_URL: pipeline_run["api_url"]}), get_client(sync_client=True) as client:
        links = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"per-class-comparison-{model_name}"]))
        )
    assert pipeline_run["summary"]["report"] in links[-1].data
    rows = json.loads(tables[-1].data) if isinstance(tables[-1].data, str) else tables[-1].data
    by_class = {row["class"]: row for row in rows}
    for name, values in pipeline_run["version"].metrics["val"]["per_class"].items():
        assert by_class[name]["new/AP50"] == values["AP50"]


def test_report_of_a_past_run_by_flow_run_id_or_key(pipeline_run, tmp_path, seaweedfs, monkeypatch):
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    layout = pipeline_run["layout"]
    stored = layout.report_html
    runner = CliRunner()
    for run in (pipeline_run["flow_run_id"], layout.run_key):
        out = tmp_path / f"{run}.html"
        result = runner.invoke(app, ["report", run, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == stored.read_bytes()
    result = runner.invoke(app, ["report", "no-such-run"])
    assert result.exit_code == 1 and "no-such-run" in result.output

    # Without the local copy, the one stored in S3 with the run comes back.
    aside = tmp_path / "aside.html"
    shutil.move(stored, aside)
    try:
        fetched = report_for_run(layout.run_key, store=pipeline_run["store"])
        assert fetched.read_bytes() == aside.read_bytes()
    finally:
        shutil.copyfile(aside, stored)


def test_the_flow_scores_every_train_image_out_of_fold(pipeline_run):
    """label_review.kfold_train in the real flow: each image of the run's train split is in the
    review queue once, scored by the one fold model whose own training list (the data.yaml
    Ultralytics read) does not hold it; the fold checkpoints are in the bucket."""
    layout, store = pipeline_run["layout"], pipeline_run["store"]

    def train_images(data_yaml: Path) -> set[Path]:
        return {Path(p).resolve() for p in resolve_split_images(data_yaml)["train"]}

    train = train_images(layout.stage_dir("dataset") / "data.yaml")
    review = json.loads((layout.stage_dir("label-review") / "label_review.json").read_text())
    queue = json.loads((layout.stage_dir("label-review") / "review_queue.json").read_text())
    scored = [r for r in queue if r["split"] == "train"]
    assert sorted(Path(r["image"]).resolve() for r in scored) == sorted(train)
    folds = {f"fold {m['fold']}/{m['k']}": m for m in review["kfold"]["folds"]}
    assert len(folds) == 2 and {r["scored_by"] for r in scored} == set(folds)
    for row in scored:
        model = folds[row["scored_by"]]
        assert Path(row["image"]).resolve() not in train_images(Path(model["data_yaml"]))
        assert model["trained_images"] + model["holdout_images"] == len(train)
    in_bucket = store.list(layout.stage_key("label-review", "kfold"))
    assert sum(key.endswith("/weights/last.pt") for key in in_bucket) == 2, in_bucket


def test_missing_parts_are_named_not_fatal(pipeline_run, tmp_path):
    partial = RunLayout.for_run("partial-run", tmp_path / "state")
    partial.stage_dir("train").mkdir(parents=True)
    for name in ("results.csv", "args.yaml"):
        shutil.copy(pipeline_run["layout"].stage_dir("train") / name, partial.stage_dir("train") / name)
    page = Page(build_html_report(partial, tmp_path / "r.html").read_text())
    text = (tmp_path / "r.html").read_text()
    for missing in (
        "validation/report.json",
        "dataset/balance.csv",
        "selection/selection.json",
        "selection/candidates.csv",
        "report/promotion.json",
        "report/timings.json",
        "report/detections/detections.json",
        "label-review/label_review.json",
    ):
        assert f"Not available: {missing}" in text
    assert [img["data-name"] for img in page.images] == ["Training curves per epoch"]
    assert all(text == "–" for _, text in page.cells.values())
    with pytest.raises(ReportError, match="no such run directory"):
        build_html_report(RunLayout.for_run("nope", tmp_path / "state"), tmp_path / "x.html")


def _spec():
    return wandb_report_spec(
        entity="acme",
        project="site-inspection-phase2",
        run_id="abc123",
        title="site-inspection-detector:v3 review",
        description="run abc123",
        html_link="s3://bucket/runs/abc123/report/report.html",
    )


def _panels(spec) -> list:
    return [p for b in spec.blocks if isinstance(b, wr.PanelGrid) for p in b.panels]


def _panel_keys(spec) -> tuple[set[str], set[str], set[str]]:
    """(line plot y keys, media keys, table names) of the report's panels."""
    panels = _panels(spec)
    return (
        {key for p in panels if isinstance(p, wr.LinePlot) for key in p.y},
        {key for p in panels if isinstance(p, wr.MediaBrowser) for key in p.media_keys},
        {p.table_name for p in panels if isinstance(p, wr.WeavePanelSummaryTable)},
    )


def test_wandb_report_spec_panels():
    """Built with no network (saving it needs W&B online)."""
    spec = _spec()
    assert (spec.entity, spec.project, spec.title) == (
        "acme",
        "site-inspection-phase2",
        "site-inspection-detector:v3 review",
    )
    grids = [b for b in spec.blocks if isinstance(b, wr.PanelGrid)]
    panels = _panels(spec)
    # Every grid shows exactly this run.
    assert all(
        len(g.runsets) == 1 and g.runsets[0].filters == "ID = 'abc123'" and g.runsets[0].entity == "acme" for g in grids
    )
    assert all(p.x == "epoch" for p in panels if isinstance(p, wr.LinePlot))
    plotted, media, tables = _panel_keys(spec)
    assert {
        "metrics/precision",
        "metrics/recall",
        "metrics/mAP50",
        "metrics/mAP50-95",
        "lr/pg0",
        "train/box_loss",
        "val/cls_loss",
    } <= plotted
    assert {
        "validation/class_counts",
        "dataset/balance",
        "selection/pr_curve",
        "selection/confusion_matrix",
        "report/detections",
    } <= media
    assert {
        "report/per_class_comparison",
        "report/timings",
        "promotion/comparison",
        "selection/candidates",
        "selection/per_class_val",
    } <= tables
    assert [b.text for b in spec.blocks if isinstance(b, wr.H2)][0] == "Training curves per epoch"
    assert any(isinstance(b, wr.P) and "s3://bucket/runs/abc123/report/report.html" in str(b.text) for b in spec.blocks)


def test_wandb_report_panels_show_what_the_run_logged(pipeline_run):
    """Each panel's key was really logged by the pipeline's steps (offline run read back)."""
    plotted, media, tables = _panel_keys(_spec())
    run_dir = Path(pipeline_run["summary"]["wandb_run"].removeprefix("offline:"))
    logged = {key.split(".", 1)[0] for row in offline_history(run_dir) for key in row}  # media/tables: key.path
    if not pipeline_run["summary"]["what_changed"].startswith("since "):  # not compared: no table (tasks/diff.py)
        tables -= {WANDB_WHAT_CHANGED_TABLE}
    assert plotted | media | tables <= logged, sorted((plotted | media | tables) - logged)


def test_the_flow_registers_an_onnx_export_with_parity_and_a_model_card(pipeline_run):
    """#15 through the real flow: the version has its export, parity on the gate split, and the card."""
    version = pipeline_run["version"]
    onnx = version.exports["onnx"]
    assert onnx.parity is not None, onnx.reason
    parity = onnx.parity
    assert parity.split == "test" and parity.n_images == 3  # the fixture's test split: 3 images
    assert parity.delta_map50 == pytest.approx(abs(parity.map50_export - parity.map50_pt), abs=1e-12)
    assert parity.delta_map50_95 == pytest.approx(abs(parity.map50_95_export - parity.map50_95_pt), abs=1e-12)
    assert onnx.path in version.files and all(f in version.files for f in onnx.files)
    assert {"MODEL_CARD.md", "model_card.json"} <= set(version.files)
