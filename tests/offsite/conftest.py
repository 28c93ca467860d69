"""Fixtures of the offsite suite: a back-end on loopback and a site configured for it.

`each_engine` (a local repository of each engine) is what a behaviour test takes to run
on every engine; `each_backend` adds every remote back-end of each, `each_ssh` one
reached over ssh per engine (a server that can be stopped). A new engine is one more
parameter of each (its back-ends in support.offsite.BACKENDS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.offsite import BACKENDS, Backend, Offsite, make_offsite, need_borg, need_restic


def _site(kind: str, sandbox: Path) -> Iterator[Offsite]:
    with BACKENDS[kind](sandbox) as backend:
        if backend.engine == "borg":
            need_borg()
        else:
            need_restic()
        yield make_offsite(sandbox, backend)


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
    yield from _site(request.param, sandbox)


@pytest.fixture(params=["local", "sftp", "s3", "borg-local", "borg-ssh"])
def each_backend(request: pytest.FixtureRequest, sandbox: Path) -> Iterator[Offsite]:
    """A site on each back-end of each engine."""
    yield from _site(request.param, sandbox)


@pytest.fixture(params=["sftp", "borg-ssh"])
def each_ssh(request: pytest.FixtureRequest, sandbox: Path) -> Iterator[Offsite]:
    """A site on a repository of each engine reached through a real sshd on loopback."""
    yield from _site(request.param, sandbox)
