"""`phase2 runs`: past runs of this state dir, newest first, as a table or JSON."""

from __future__ import annotations

import json
import os

from phase2.runs import RunLayout
from tests.cli.helpers import run_cli


def _finished_run(state, key: str, *, promoted: bool, mtime: float) -> None:
    layout = RunLayout.for_run(key, state)
    layout.report_html.parent.mkdir(parents=True)
    layout.report_html.write_text("<html></html>")
    summary = {"status": "completed", "model": f"m:v{key[-1]}", "promoted": promoted, "run_key": key}
    layout.summary_json.write_text(json.dumps(summary))
    os.utime(layout.summary_json, (mtime, mtime))


def test_runs_lists_finished_and_unfinished_runs_newest_first(tmp_path):
    state = tmp_path / "project" / ".phase2"
    _finished_run(state, "run1", promoted=True, mtime=1_700_000_000)
    _finished_run(state, "run2", promoted=False, mtime=1_700_000_100)
    RunLayout.for_run("crashed3", state).root.mkdir()  # no summary: it never finished
    os.utime(RunLayout.for_run("crashed3", state).root, (1_600_000_000, 1_600_000_000))

    result = run_cli("runs", "--json", cwd=tmp_path / "project")
    assert result.returncode == 0, result.stderr
    runs = result.json()
    assert [r["run_key"] for r in runs] == ["run2", "run1", "crashed3"]
    assert runs[0]["model"] == "m:v2" and runs[0]["promoted"] is False
    assert runs[1]["report"] == str(RunLayout.for_run("run1", state).report_html)
    assert runs[1]["finished_at"].startswith("2023-11-14")
    assert runs[2]["finished_at"] is None and runs[2]["status"].startswith("unfinished")

    table = run_cli("runs", cwd=tmp_path / "project")
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and len(lines) == 3
    assert lines[0].startswith("run2") and "not promoted" in lines[0] and lines[1].split()[-1].endswith("report.html")


def test_runs_in_a_project_without_runs_says_so_and_creates_nothing(tmp_path):
    result = run_cli("runs", cwd=tmp_path)
    assert result.returncode == 0 and "no runs yet" in result.stdout
    assert list(tmp_path.iterdir()) == []
