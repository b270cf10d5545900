"""The W&B Report's "What changed" section shows the table the what-changed task logs.

The key is read from tasks/diff.py's own Publication (its source, evaluated in the module), and a
real offline W&B run checks that the table is still in the run summary (what the report's table
panels read) after the task's summary values are written next to it.
"""

from __future__ import annotations

import ast
import inspect

import wandb_workspaces.reports.v2 as wr

import tasks.diff
from phase2.report.wandb_report import wandb_report_spec


def _publication_keywords() -> tuple[str, list[str]]:
    """(the W&B key of the what-changed table, the constant run summary keys of the same
    Publication) in tasks/diff.py."""
    tree = ast.parse(inspect.getsource(tasks.diff))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    table = next(
        call
        for call in calls
        if any(kw.arg == "key" and ast.literal_eval(kw.value) == "what-changed-per-class" for kw in call.keywords)
    )
    wandb_key = next(kw.value for kw in table.keywords if kw.arg == "wandb_key")
    key = eval(compile(ast.Expression(wandb_key), "tasks/diff.py", "eval"), vars(tasks.diff))
    summary = next(kw.value for call in calls if table in ast.walk(call) for kw in call.keywords if kw.arg == "summary")
    assert isinstance(summary, ast.Dict)
    constants = [k.value for k in summary.keys if isinstance(k, ast.Constant)]
    return key, constants


def _spec():
    return wandb_report_spec(entity="acme", project="p", run_id="abc123", title="t", description="run abc123")


def test_what_changed_section_shows_the_logged_table():
    key, summary_keys = _publication_keywords()
    blocks = _spec().blocks
    heading = next(i for i, b in enumerate(blocks) if isinstance(b, wr.H2) and "What changed" in str(b.text))
    grid = next(b for b in blocks[heading:] if isinstance(b, wr.PanelGrid))
    assert [p.table_name for p in grid.panels if isinstance(p, wr.WeavePanelSummaryTable)] == [key]
    assert grid.runsets[0].filters == "ID = 'abc123'"
    assert key not in summary_keys, f"{key} is also a run summary value in tasks/diff.py: it replaces the table"
    tables = {p.table_name for b in blocks if isinstance(b, wr.PanelGrid) for p in b.panels if hasattr(p, "table_name")}
    assert "label_review/queue" in tables


def test_the_logged_table_survives_the_task_summary(tmp_path, monkeypatch):
    """A real offline W&B run: the table logged under the key, then the task's summary values."""
    import wandb

    key, summary_keys = _publication_keywords()
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="what-changed-test", mode="offline", dir=str(tmp_path))
    try:
        run.log({key: wandb.Table(columns=["split", "class", "old", "new"], data=[["val", "toe_drain", 3, 4]])})
        run.summary.update(dict.fromkeys(summary_keys, "since v1: 3 images added"))
        logged = run.summary[key]
    finally:
        run.finish()
    assert not isinstance(logged, str), f"run summary {key} is {logged!r}, not the table"
    assert logged["_type"] == "table-file" and logged["nrows"] == 1
