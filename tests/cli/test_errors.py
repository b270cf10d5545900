"""Item 6 and the error boundary: plausible wrong inputs give one `error:` line naming the input and
the fix (no traceback), exit 1 for a failure and 2 for a usage mistake."""

from __future__ import annotations

import sys

from tests.cli.helpers import run_cli, write_results_csv
from tests.dataset.builders import make_dataset


def test_empty_and_binary_results_csv(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    for name, what in (("empty.csv", "empty file"), ("binary.csv", "not a CSV")):
        result = run_cli("history", name, cwd=tmp_path)
        assert result.returncode == 1
        line = result.error_line()
        assert line.startswith(f"error: {name}: {what}") and "results.csv" in line


def test_broken_args_yaml_names_the_file_and_the_way_around_it(tmp_path):
    write_results_csv(tmp_path / "run" / "results.csv")
    (tmp_path / "run" / "args.yaml").write_text("epochs: 80\npatience: [15\n")
    result = run_cli("history", "run/results.csv", cwd=tmp_path)
    assert result.returncode == 1
    line = result.error_line()
    assert "run/args.yaml" in line and "not valid YAML" in line and "--patience and --epochs" in line
    # The way around it works.
    ok = run_cli("history", "run/results.csv", "--patience", "15", "--epochs", "80", cwd=tmp_path)
    assert ok.returncode == 0 and "patience 15 after epoch 6" in ok.stdout


def test_binary_recipe_file(tmp_path):
    (tmp_path / "recipe.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 8)
    result = run_cli("lint", "./recipe.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.error_line().startswith("error: recipe.yaml: not a text YAML file")


def test_out_pointing_at_an_existing_file(tmp_path):
    make_dataset(tmp_path / "ds")
    (tmp_path / "report.txt").write_text("keep me")
    result = run_cli("validate", "ds/data.yaml", "--out", "report.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert result.error_line() == (
        "error: report.txt: --out is an existing file, not a directory (pass a new or existing directory)"
    )
    assert (tmp_path / "report.txt").read_text() == "keep me"


def test_usage_mistakes_exit_2_with_one_line(tmp_path):
    zero = run_cli("validate", "data.yaml", "--imgsz", "0", cwd=tmp_path)
    assert zero.returncode == 2
    assert "--imgsz" in zero.error_line() and "phase2 validate --help" in zero.error_line()
    unknown = run_cli("modles", "list", cwd=tmp_path)
    assert unknown.returncode == 2 and "No such command 'modles'" in unknown.error_line()
    no_baseline = run_cli("run", "--data", "data.yaml", cwd=tmp_path)
    assert no_baseline.returncode == 2
    assert no_baseline.error_line() == "error: --baseline is required with --data (weights to fine-tune from)"


def test_missing_file_names_it(tmp_path):
    result = run_cli("history", "nope/results.csv", cwd=tmp_path)
    assert result.returncode == 1 and "nope/results.csv" in result.error_line()


def test_validate_with_nothing_readable_prints_one_line_not_an_empty_report(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [a, b]\n")
    result = run_cli("validate", "data.yaml", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.error_line().startswith("error: data.yaml: 'train:' key missing")
    as_json = run_cli("validate", "data.yaml", "--json", cwd=tmp_path)
    assert as_json.returncode == 1 and as_json.json()["findings"][0]["code"] == "YAML_SPLIT_KEY_MISSING"


# Fake commands (a bug can't be shipped on purpose): one raises a library's ValueError, one a KeyError.
_BUGGY_APP = """
import numpy as np
from phase2.cli import app

@app.command("fake-bug")
def fake_bug(kind: str) -> None:
    if kind == "library-value-error":
        np.zeros(-1)
    raise KeyError("an internal key")

app(prog_name="phase2")
"""


def test_bugs_keep_their_traceback(tmp_path):
    """Only expected failures become one line: a bug (ours, or a library's ValueError) keeps its traceback."""
    for kind, message in (("library-value-error", "negative dimensions"), ("key-error", "an internal key")):
        result = run_cli("fake-bug", kind, cwd=tmp_path, program=[sys.executable, "-c", _BUGGY_APP])
        assert result.returncode == 1, (kind, result.stderr[-1500:])
        assert "Traceback" in result.stderr and message in result.stderr, (kind, result.stderr[-1500:])
        assert not result.stderr.startswith("error:"), kind
