"""Fixtures of the offsite suite: a back-end on loopback and a site configured for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.offsite import BACKENDS, Backend, Offsite, make_offsite, need_borg, need_restic


@pytest.fixture(params=["local", "sftp", "s3"])
def any_backend(request: pytest.FixtureRequest, sandbox: Path) -> Iterator[Backend]:
    need_restic()
    with BACKENDS[request.param](sandbox) as backend:
        yield backend


@pytest.fixture
def local_backend(sandbox: Path) -> Iterator[Backend]:
    need_restic()
    with BACKENDS["local"](sandbox) as backend:
        yield backend


@pytest.fixture
def offsite(sandbox: Path, local_backend: Backend) -> Offsite:
    return make_offsite(sandbox, local_backend)


@pytest.fixture
def any_offsite(sandbox: Path, any_backend: Backend) -> Offsite:
    return make_offsite(sandbox, any_backend)


@pytest.fixture(params=["local", "borg-local"])
def each_engine(request: pytest.FixtureRequest, sandbox: Path) -> Iterator[Offsite]:
    """A site on a local repository of each engine (restic, borg)."""
    if request.param == "local":
        need_restic()
    else:
        need_borg()
    with BACKENDS[request.param](sandbox) as backend:
        yield make_offsite(sandbox, backend)
