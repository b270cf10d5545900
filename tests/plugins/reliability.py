"""`reliability_log` fixture and the writer of docs/reliability.md.

A test calls ``reliability_log(category, kind, tried=N, expected=..., observed=...)``; the row
counts as green only if that test passes. With PHASE2_WRITE_RELIABILITY_TABLE=1 the session
writes the table at the end (ordinary runs leave the tree clean).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability_table import ReliabilityLog

WRITE_ENV = "PHASE2_WRITE_RELIABILITY_TABLE"
TABLE_PATH = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
_LOG = ReliabilityLog()


@pytest.fixture
def reliability_log(request) -> Callable[..., None]:
    """Record a row for this test: (category, kind, tried=, expected=, observed=)."""
    nodeid = request.node.nodeid

    def record(category: str, kind: str, *, tried: int = 1, expected: str, observed: str) -> None:
        _LOG.record(nodeid, category, kind, tried=tried, expected=expected, observed=observed)

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _LOG.test_failed(item.nodeid)
    if report.when == "teardown":
        _LOG.test_finished(item.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get(WRITE_ENV) == "1" and _LOG.rows:
        _LOG.write(TABLE_PATH)
