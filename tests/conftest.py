"""Shared test plumbing.

Tests that need root or a tool skip with a clear reason when those are missing —
except in CI, where `.ci/run` sets T3BACKUPD_NO_SKIP=1 and every skip becomes a failure
(a missing install step must not hide behind a green run).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from support import NO_SKIP
from support.daemon import Site, make_site
from support.system import make_sandbox, user_factory

from t3backupd.core.usermap import User

# No per-example deadline: speed is measured in bench/, never asserted by a test (a
# loaded 2-core machine must not turn a correct property into a failure).
settings.register_profile("t3backupd", deadline=None)
settings.load_profile("t3backupd")


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


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A fresh root-owned 0755 directory under /var/tmp (reachable by test users)."""
    with make_sandbox() as path:
        yield path


@pytest.fixture
def make_user() -> Iterator[Callable[[], User]]:
    """Factory of real OS users (useradd), removed with their homes afterwards."""
    with user_factory() as factory:
        yield factory


@pytest.fixture
def site(sandbox: Path) -> Iterator[Site]:
    """A sandbox for the real daemon: config, usermap, dest, users (see support.daemon)."""
    with make_site(sandbox) as value:
        yield value
