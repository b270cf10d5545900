"""`reliability_log` fixture and the writer of docs/reliability.md.

A test calls ``reliability_log(category, kind, tried=N, expected=..., observed=...)`` to say what it
tried and saw. Whether the row passed is not the test's say: every case's result comes from pytest's
reports (``pytest_runtest_logreport``), and the rows the table must have are listed, with their test
cases, in tests/reliability_rows.yaml. With PHASE2_WRITE_RELIABILITY_TABLE=1 (``make reliability``)
or ``--reliability-table PATH`` the session writes the table at the end, FAIL and MISSING rows
included, and exits non-zero unless every row passed. Ordinary runs leave the tree clean. Under
CI=1 a test that uses the fixture and skips (no tmpfs, say) fails instead: rows run in CI or fail.
Every such test is marked ``reliability`` (``-m reliability``), slow ones too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from tests.reliability_table import (
    ReliabilityLog,
    RowsFileError,
    TableRow,
    load_expected_rows,
    summary_line,
    write_table,
)

WRITE_ENV = "PHASE2_WRITE_RELIABILITY_TABLE"
REPO = Path(__file__).resolve().parents[2]
TABLE_PATH = REPO / "docs" / "reliability.md"
ROWS_PATH = REPO / "tests" / "reliability_rows.yaml"


class ReliabilityRun:
    """One session's log; writes the table at the end when a table path is set."""

    def __init__(self, table: Path | None, rows_file: Path) -> None:
        self.log = ReliabilityLog()
        self.table = table
        self.rows_file = rows_file
        self.expected = load_expected_rows(rows_file) if table else []
        self.rows: list[TableRow] = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Under CI=1 a test behind a row may not skip (e.g. no tmpfs): it must run or fail."""
        report = yield
        row_test = "reliability_log" in getattr(item, "fixturenames", ())
        if report.skipped and row_test and os.environ.get("CI") and not hasattr(report, "wasxfail"):
            report.outcome = "failed"
            report.longrepr = f"{_reason(report)}: a test behind a reliability row may not skip under CI=1"
        return report

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.log.report(report.nodeid, report.when, report.outcome, _reason(report))

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.table is None:
            return
        self.rows = self.log.rows(self.expected)
        write_table(self.table, self.rows)
        if any(r.status != "pass" for r in self.rows) and session.exitstatus in (0, 5):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.table is None:
            return
        terminalreporter.write_sep("-", f"reliability table: {self.table}")
        for row in self.rows:
            if row.status != "pass":
                terminalreporter.write_line(f"{row.result()}: {row.category} / {row.kind}: {row.observed()[:200]}")
            for case in row.cases:
                if case.status == "UNLISTED":
                    terminalreporter.write_line(f"  add to {self.rows_file.name} under this kind: - {case.nodeid}")
        bad = any(r.status != "pass" for r in self.rows)
        terminalreporter.write_line(
            summary_line(self.rows) + (f" (rows listed in {self.rows_file}); exit non-zero" if bad else ""),
            red=bad,
            green=not bad,
        )


_RUN = pytest.StashKey[ReliabilityRun]()
# On every test that uses reliability_log, slow or not: `-m reliability` selects the table's tests,
# and CI's `-m "not slow or reliability"` the fast suite plus the slow tests behind a row.
MARK = "reliability"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "reliability_log" in getattr(item, "fixturenames", ()):
            item.add_marker(MARK)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability", "the reliability table (docs/reliability.md)")
    group.addoption(
        "--reliability-table",
        default=None,
        help=f"write the table here and fail on FAIL/MISSING rows (also on with {WRITE_ENV}=1: {TABLE_PATH})",
    )
    group.addoption("--reliability-rows", default=str(ROWS_PATH), help="the rows file (default: %(default)s)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARK}: behind a row of docs/reliability.md (set by this plugin); CI runs them all"
    )
    table = config.getoption("reliability_table") or (TABLE_PATH if os.environ.get(WRITE_ENV) == "1" else None)
    try:
        run = ReliabilityRun(Path(table) if table else None, Path(config.getoption("reliability_rows")))
    except RowsFileError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_RUN] = run
    config.pluginmanager.register(run, "phase2-reliability-run")


@pytest.fixture
def reliability_log(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record what this test tried and saw for a row: (category, kind, tried=, expected=, observed=)."""
    log = request.config.stash[_RUN].log
    nodeid = request.node.nodeid

    def record(category: str, kind: str, *, tried: int = 1, expected: str, observed: str) -> None:
        log.record(nodeid, category, kind, tried=tried, expected=expected, observed=observed)

    return record


def _reason(report: pytest.TestReport) -> str:
    """The first line of why a case failed or was skipped ("" when it passed)."""
    if report.passed:
        return ""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (file, line, "Skipped: why")
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    return next((line.strip() for line in text.splitlines() if line.strip()), "failed")
