"""tests/plugins/reliability.py: rows come from test outcomes, listed rows that never ran are MISSING,
and a table with a FAIL or MISSING row fails the run. Each case runs a small suite through pytester."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.plugins.reliability import WRITE_ENV

pytest_plugins = ["pytester"]
# hypothesis' plugin re-imports hypothesis in every in-process run (~1 s each): not needed here
PLUGINS = ("-p", "tests.plugins.reliability", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")

CHECKS = """
import pytest

@pytest.mark.parametrize("case", ["a", "b"])
def test_defects(case, reliability_log):
    assert not (BROKEN and case == "b"), "check b broke"
    reliability_log("bad input", "defects", tried=2, expected="refused", observed=f"refused {case}")

def test_fault(reliability_log):
    reliability_log("fault", "server killed", expected="recovers", observed="recovered")
"""

ROWS = [
    {
        "category": "fault",
        "kind": "server killed",
        "expected": "recovers",
        "cases": ["test_checks.py::test_fault"],
    },
    {
        "category": "bad input",
        "kind": "defects",
        "expected": "refused",
        "cases": ["test_checks.py::test_defects[a]", "test_checks.py::test_defects[b]"],
    },
]


@pytest.fixture(autouse=True)
def _outside_ci(monkeypatch):
    """The suites below run as on a developer machine unless a test sets CI itself."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(WRITE_ENV, raising=False)


def run_suite(pytester: pytest.Pytester, checks: str, rows: object = ROWS) -> tuple[int, str, str]:
    """Run `checks` with the reliability plugin writing a table; returns (exit code, table, output)."""
    pytester.makepyfile(test_checks=checks)
    rows_file = pytester.path / "rows.yaml"
    rows_file.write_text(yaml.safe_dump(rows) if not isinstance(rows, str) else rows)
    table = pytester.path / "reliability.md"
    result = pytester.runpytest(
        *PLUGINS,
        f"--reliability-table={table}",
        f"--reliability-rows={rows_file}",
    )
    text = table.read_text() if table.exists() else ""
    return int(result.ret), text, result.stdout.str() + result.stderr.str()


def row_line(table: str, kind: str) -> str:
    (line,) = [line for line in table.splitlines() if line.startswith("| ") and f"| {kind} |" in line]
    return line


def test_all_green_run_writes_pass_rows_and_exits_0(pytester):
    code, table, output = run_suite(pytester, "BROKEN = False\n" + CHECKS)
    assert code == 0, output
    assert row_line(table, "defects") == "| bad input | defects | 4 | refused | refused a; refused b | pass |"
    assert row_line(table, "server killed") == "| fault | server killed | 1 | recovers | recovered | pass |"
    assert "**2 rows: 2 pass, 0 FAIL, 0 MISSING; 3 cases: 3 pass, 0 FAIL, 0 MISSING**" in table
    assert "2 rows: 2 pass, 0 FAIL, 0 MISSING; 3 cases" in output


def test_a_broken_check_is_a_fail_row_with_its_reason_and_the_run_fails(pytester):
    # case b fails before it records anything: its row must still be there, and say FAIL
    code, table, output = run_suite(pytester, "BROKEN = True\n" + CHECKS)
    assert code == 1, output
    line = row_line(table, "defects")
    assert line.endswith("| FAIL (1 of 2) |"), line
    assert "FAIL [b]: AssertionError: check b broke" in line and "refused a" in line
    assert row_line(table, "server killed").endswith("| pass |")
    assert "**2 rows: 1 pass, 1 FAIL, 0 MISSING; 3 cases: 2 pass, 1 FAIL, 0 MISSING**" in table
    assert "| bad input | 1 | 2 | NO |" in table  # the category summary is not green either


def test_a_removed_test_or_case_leaves_its_row_missing_and_the_run_fails(pytester):
    # one parametrized case dropped (the "55 cases become 54" hole) and one whole test removed
    checks = "BROKEN = False\n" + CHECKS.split("def test_fault")[0].replace('["a", "b"]', '["a"]')
    code, table, output = run_suite(pytester, checks)
    assert "1 passed" in output  # every test that ran passed ...
    assert code == 1, output  # ... and still the run fails: listed rows are absent
    assert row_line(table, "server killed") == (
        "| fault | server killed | 0 | recovers | MISSING test_fault: not run (deselected, removed or renamed?) "
        "| MISSING (1 of 1) |"
    )
    line = row_line(table, "defects")
    assert line.endswith("| MISSING (1 of 2) |") and "MISSING [b]: not run" in line and "refused a" in line
    assert "**2 rows: 0 pass, 0 FAIL, 2 MISSING; 3 cases: 1 pass, 0 FAIL, 2 MISSING**" in table
    assert "MISSING (1 of 1): fault / server killed" in output


def test_skips_setup_errors_silent_passes_and_unlisted_rows_all_count(pytester):
    checks = """
import pytest

@pytest.fixture
def service():
    raise RuntimeError("server did not start")

def test_skipped(reliability_log):
    pytest.skip("cannot mount a tmpfs here")

def test_needs_service(service, reliability_log):
    reliability_log("fault", "service", expected="up", observed="up")

def test_silent(reliability_log):
    pass

def test_new(reliability_log):
    reliability_log("load", "not in the rows file", expected="x", observed="y")
"""
    rows = [
        {"category": "fault", "kind": k, "expected": "e", "cases": [f"test_checks.py::{t}"]}
        for k, t in [("skip", "test_skipped"), ("service", "test_needs_service"), ("silent", "test_silent")]
    ]
    code, table, output = run_suite(pytester, checks, rows)
    assert code == 1, output
    assert "MISSING test_skipped: skipped: Skipped: cannot mount a tmpfs here" in row_line(table, "skip")
    assert "error test_needs_service: error in setup: RuntimeError: server did not start" in row_line(table, "service")
    assert "MISSING test_silent: the test passed without recording this row" in row_line(table, "silent")
    assert row_line(table, "not in the rows file").endswith("| UNLISTED (1 of 1) |")
    assert "add to rows.yaml under this kind: - test_checks.py::test_new" in output
    assert (
        "**4 rows: 0 pass, 0 FAIL, 2 MISSING, 1 error, 1 UNLISTED; "
        "4 cases: 0 pass, 0 FAIL, 2 MISSING, 1 error, 1 UNLISTED**" in table
    )


def test_a_bad_rows_file_stops_the_run_naming_the_file(pytester):
    rows = [{**ROWS[0], "category": "faults"}]
    code, table, output = run_suite(pytester, "BROKEN = False\n" + CHECKS, rows)
    assert code == pytest.ExitCode.USAGE_ERROR and table == ""
    assert "rows.yaml: entry 1: category 'faults' is not one of" in output


def test_ordinary_runs_record_but_write_nothing(pytester):
    pytester.makepyfile(test_checks="BROKEN = False\n" + CHECKS)
    result = pytester.runpytest(*PLUGINS)
    assert result.ret == 0
    assert [p.name for p in Path(pytester.path).iterdir()] == ["test_checks.py"]


def test_under_ci_a_row_test_that_skips_fails_and_other_skips_stay_skips(pytester, monkeypatch):
    monkeypatch.setenv("CI", "1")
    pytester.makepyfile(
        test_checks="""
import pytest

def test_needs_tmpfs(reliability_log):
    pytest.skip("cannot mount a tmpfs here")

def test_needs_chromium():
    pytest.skip("chromium not installed")
"""
    )
    result = pytester.runpytest(*PLUGINS, "-rfs")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["FAILED *test_needs_tmpfs*cannot mount a tmpfs here*may not skip under CI=1*", "*1 failed, 1 skipped*"]
    )


def test_the_reliability_mark_selects_every_row_test_slow_ones_too(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    slow: long\n")
    pytester.makepyfile(
        test_checks="""
import pytest

@pytest.mark.slow
def test_slow_row(reliability_log):
    reliability_log("load", "many flows", expected="ok", observed="ok")

@pytest.mark.slow
def test_slow_other():
    pass

def test_fast():
    pass
"""
    )
    result = pytester.runpytest(*PLUGINS, "--strict-markers", "-v", "-m", "not slow or reliability")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["*test_slow_row PASSED*", "*test_fast PASSED*"])
    only_rows = pytester.runpytest(*PLUGINS, "--strict-markers", "-v", "-m", "reliability")
    only_rows.assert_outcomes(passed=1, deselected=2)


def test_the_repository_rows_file_is_valid_and_names_existing_test_files():
    from tests.plugins.reliability import REPO, ROWS_PATH
    from tests.reliability_table import load_expected_rows

    rows = load_expected_rows(ROWS_PATH)
    files = {case.split("::", 1)[0] for row in rows for case in row.cases}
    assert files and all((REPO / f).is_file() for f in files), sorted(f for f in files if not (REPO / f).is_file())
