"""phase2/runs.py: one run layout for local paths and S3 keys, run lookup, run identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phase2.runs import RunLayout, RunNotFound, derive_run_key, flow_run_summary_path, resolve_run
from phase2.training.recipe import load_recipe


def test_layout_local_paths_and_s3_keys_agree(tmp_path):
    layout = RunLayout.for_run("abc123", tmp_path)
    assert layout.root == tmp_path.resolve() / "pipeline" / "abc123"
    assert layout.stage_dir("selection") == layout.root / "selection"
    assert layout.report_html == layout.root / "report" / "report.html"
    assert layout.stage_key("train", "last.pt") == "runs/abc123/train/last.pt"
    # the report's S3 key names the same file as its local path, under the run's prefix
    assert layout.report_html_key == f"{layout.s3_prefix}/report/{layout.report_html.name}"


def test_resolve_run_by_key_or_flow_run_id(tmp_path):
    RunLayout.for_run("k1", tmp_path).root.mkdir(parents=True)
    assert resolve_run("k1", tmp_path).run_key == "k1"
    summary = flow_run_summary_path("0b7c-flow", tmp_path)
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"run_key": "k1"}))
    assert resolve_run("0b7c-flow", tmp_path).run_key == "k1"
    # summaries written before "run_key" existed name the run by its S3 prefix
    summary.write_text(json.dumps({"s3_prefix": "s3://phase2/runs/k1"}))
    assert resolve_run("0b7c-flow", tmp_path).run_key == "k1"


@pytest.mark.parametrize("run", ["missing", "..", "../..", "flow-runs", "k1/../k1", ""])
def test_resolve_run_refuses_what_is_not_a_run(tmp_path, run):
    RunLayout.for_run("k1", tmp_path).root.mkdir(parents=True)
    with pytest.raises(RunNotFound):
        resolve_run(run, tmp_path)


def test_run_key_is_a_function_of_the_inputs():
    recipe = load_recipe("phase2-demo")
    inputs = {"data_yaml": Path("/d/data.yaml"), "source_version": "v1", "baseline": "b.pt", "model_name": "m"}
    key = derive_run_key(recipe=recipe, **inputs)
    assert key == derive_run_key(recipe=recipe, **inputs) and len(key) == 12
    changed = recipe.model_copy(update={"name": "other"})
    assert derive_run_key(recipe=changed, **inputs) != key
    assert derive_run_key(recipe=recipe, **{**inputs, "source_version": "v2"}) != key
