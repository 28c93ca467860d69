"""Helpers shared by the test suites (on sys.path via pytest's `pythonpath`)."""

from __future__ import annotations

import os

import pytest

NO_SKIP = os.environ.get("T3BACKUPD_NO_SKIP") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip (or, in CI where T3BACKUPD_NO_SKIP=1, fail) unless `condition` holds."""
    if not condition:
        if NO_SKIP:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)
