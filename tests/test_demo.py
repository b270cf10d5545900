"""What `phase2 run` / `make run` prints at the end: the local report and how to browse the run."""

from __future__ import annotations

from phase2.demo import run_summary
from phase2.runs import RunLayout

SUMMARY = {
    "state": "COMPLETED",
    "flow_run_id": "0b1c",
    "status": "completed",
    "model": "site-inspection-detector:3",
    "promoted": False,
    "val_mAP50": 0.41,
    "report": "s3://phase2/runs/r1/report/report.html",
    "s3_prefix": "s3://phase2/runs/r1",
    "run_key": "r1",
    "prefect_ui": "http://127.0.0.1:4200/runs/flow-run/0b1c",
}


def test_a_stopped_stack_gets_the_local_report_and_make_up_not_dead_links(tmp_path):
    report = RunLayout.for_run("r1", tmp_path).report_html
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")
    text = run_summary(SUMMARY | {"state_dir": str(tmp_path)}, stack_up=False)
    assert f"report (local): {report}" in text and str(RunLayout.for_run("r1", tmp_path).root) in text
    assert "make up" in text
    assert "s3://" not in text and "4200" not in text  # the stack this command started is down

    live = run_summary(SUMMARY | {"state_dir": str(tmp_path)}, stack_up=True)
    assert str(report) in live and SUMMARY["prefect_ui"] in live and SUMMARY["report"] in live


def test_a_run_that_stopped_early_says_the_report_was_not_written(tmp_path):
    text = run_summary(SUMMARY | {"state": "FAILED", "state_dir": str(tmp_path)}, stack_up=False)
    assert "not written" in text and "FAILED" in text
