"""Shared test plumbing.

Tests that need root or a tool skip with a clear reason when those are missing —
except in CI, where `.ci/run` sets T3BACKUPD_NO_SKIP=1 and every skip becomes a failure
(a missing install step must not hide behind a green run).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest
from support import NO_SKIP


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (T3BACKUPD_NO_SKIP=1): {reason}"
