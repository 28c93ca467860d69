"""Fault-injection fixtures: the same real users and sandboxes as the integration suite
(helpers live in tests/support/system.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.system import make_sandbox, user_factory

from t3backupd.usermap import User


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
