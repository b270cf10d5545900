"""One pipeline run's layout: where its files live locally and under which S3 keys.

Every stage, the report and the CLI find a run's files through :class:`RunLayout`; nothing
else builds these paths by string.

- local: ``<state>/pipeline/<run_key>/<stage>/…``, plus ``summary.json``
- S3: ``runs/<run_key>/<stage>/<file name>``
- ``<state>/pipeline/flow-runs/<flow_run_id>.json``: the summary of the flow run that made a run
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from phase2.infra.files import sha256_bytes
from phase2.infra.settings import state_dir
from phase2.training.recipe import Recipe

Stage = Literal[
    "validation", "dataset", "train", "selection", "label-review", "production", "production-eval", "report"
]
PIPELINE_DIR = "pipeline"
FLOW_RUNS_DIR = "flow-runs"
S3_RUNS_PREFIX = "runs"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a run key or flow run id, never a path


class RunNotFound(LookupError):
    """A run reference that names no run of this state dir."""


class RunLayout(BaseModel):
    """Paths and S3 keys of the run ``run_key`` in the state dir ``state``."""

    model_config = ConfigDict(frozen=True)

    run_key: str
    state: Path

    @classmethod
    def for_run(cls, run_key: str, state: Path | None = None) -> RunLayout:
        return cls(run_key=run_key, state=Path(state or state_dir()).resolve())

    # --- local --------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.state / PIPELINE_DIR / self.run_key

    def stage_dir(self, stage: Stage) -> Path:
        return self.root / stage

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def report_html(self) -> Path:
        return self.stage_dir("report") / "report.html"

    # --- S3 -------------------------------------------------------------------------------------

    @property
    def s3_prefix(self) -> str:
        return f"{S3_RUNS_PREFIX}/{self.run_key}"

    def stage_prefix(self, stage: Stage) -> str:
        return f"{self.s3_prefix}/{stage}"

    def stage_key(self, stage: Stage, name: str) -> str:
        return f"{self.stage_prefix(stage)}/{name}"

    @property
    def report_html_key(self) -> str:
        return self.stage_key("report", self.report_html.name)


def flow_run_summary_path(flow_run_id: str, state: Path | None = None) -> Path:
    """Where the summary of the flow run ``flow_run_id`` is kept (``phase2 run`` reads it)."""
    return Path(state or state_dir()).resolve() / PIPELINE_DIR / FLOW_RUNS_DIR / f"{flow_run_id}.json"


def resolve_run(run: str, state: Path | None = None) -> RunLayout:
    """The run named by ``run``: a run key (a folder under ``<state>/pipeline``) or the id of the
    Prefect flow run that made it. Only plain names are looked up (never a path)."""
    pipeline = Path(state or state_dir()).resolve() / PIPELINE_DIR
    if _RUN_NAME.fullmatch(run):
        summary_file = flow_run_summary_path(run, state)
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            # Summaries written before "run_key" was recorded name the run by its S3 prefix only.
            run_key = str(summary.get("run_key") or str(summary["s3_prefix"]).rstrip("/").rsplit("/", 1)[-1])
            if _RUN_NAME.fullmatch(run_key):
                return RunLayout.for_run(run_key, state)
        if run != FLOW_RUNS_DIR and (pipeline / run).is_dir():
            return RunLayout.for_run(run, state)
    raise RunNotFound(
        f"{run!r}: neither a run key in {pipeline} nor a flow run id with a summary in "
        f"{pipeline / FLOW_RUNS_DIR}; pass the run key printed by `phase2 run` or the flow run id"
    )


class PastRun(BaseModel):
    """One run of the pipeline in this state dir, as ``phase2 runs`` lists it."""

    run_key: str
    finished_at: str | None = None  # when its summary was written; None while running or after a crash
    status: str
    model: str | None = None
    promoted: bool | None = None
    report: Path | None = None


def list_runs(state: Path | None = None) -> list[PastRun]:
    """The runs under ``<state>/pipeline``, newest first (a run without a summary did not finish)."""
    pipeline = Path(state or state_dir()).resolve() / PIPELINE_DIR
    runs = []
    for folder in pipeline.iterdir() if pipeline.is_dir() else []:
        if folder.name == FLOW_RUNS_DIR or not folder.is_dir() or not _RUN_NAME.fullmatch(folder.name):
            continue
        layout = RunLayout.for_run(folder.name, state)
        try:
            summary = json.loads(layout.summary_json.read_text())
            written = layout.summary_json.stat().st_mtime
        except (OSError, ValueError):
            summary, written = {}, folder.stat().st_mtime
        runs.append(
            (
                written,
                PastRun(
                    run_key=folder.name,
                    finished_at=datetime.fromtimestamp(written, UTC).isoformat(timespec="seconds") if summary else None,
                    status=str(summary.get("status", "unfinished (no summary: running, failed or crashed)")),
                    model=summary.get("model"),
                    promoted=summary.get("promoted"),
                    report=layout.report_html if layout.report_html.is_file() else None,
                ),
            )
        )
    return [run for _, run in sorted(runs, key=lambda item: item[0], reverse=True)]


class RunContext(BaseModel):
    """What every task of one pipeline run needs to know (small: passed between tasks)."""

    layout: RunLayout
    model_name: str
    source_dataset_version: str
    recipe: Recipe
    baseline: str
    flow_run_id: str | None = None
    skip_reason: str | None = None
    wandb_group: str | None = None  # the W&B group; None: the model name (a recipe study groups its runs)

    @property
    def run_key(self) -> str:
        return self.layout.run_key


def derive_run_key(*, data_yaml: Path, source_version: str, baseline: str, recipe: Recipe, model_name: str) -> str:
    """The same inputs give the same key, so a re-run of a crashed run resumes it."""
    identity: dict[str, Any] = {
        "data": str(data_yaml),
        "dataset": source_version,
        "baseline": baseline,
        "recipe": recipe.model_dump(mode="json"),
        "model": model_name,
    }
    return sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:12]
