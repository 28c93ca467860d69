"""Each failure reason as each engine meets it, on real repositories (restic and borg
through the `each_engine` / `each_ssh` fixtures): the server gone (`unreachable`),
another process holding the repository (`locked`), a full file system (`no_space`),
a stream that is no database (`corrupt`), an engine that does not finish in time
(`timeout`). Elsewhere per engine: `read_only` (test_offsite_read_only.py), `auth` and
`no_repository` (test_offsite_retention_faults.py), a tampered stream (`corrupt`,
test_offsite_hostile.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import need
from support.offsite import (
    ENGINE_FACTS,
    Offsite,
    copies_by_user,
    lock_held,
    one_snapshot,
    overwrite,
)
from support.snapshots import MakeUser, take_snapshot
from support.system import PYTHON, create_state_db, snapshot_files, t3backupd

from t3backupd.core.config import load_config
from t3backupd.root.offsite import make_engine
from t3backupd.root.offsite.engine import OffsiteError

pytestmark = [pytest.mark.root, pytest.mark.slow]


def failed_line(output: str, user: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(user)]
    return line


def test_a_stopped_server_is_unreachable(each_ssh: Offsite, make_user: MakeUser) -> None:
    site = each_ssh
    engine = site.backend.engine
    user, _ = one_snapshot(site, make_user, seed=65)
    site.backend.stop()
    result = t3backupd(site.config, "offsite", "sync")
    assert result.returncode == 1
    line = failed_line(result.stdout, user.name)
    listing = ENGINE_FACTS[engine].listing
    assert line.startswith(f"{user.name}: FAILED unreachable: {engine} {listing} on "), line
    site.backend.start()
    synced = t3backupd(site.config, "offsite", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"{user.name}: ok 1 uploaded" in synced.stdout, synced.stdout


def test_a_repository_another_process_holds_is_locked(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    site = each_engine
    engine = site.backend.engine
    user = make_user()
    # borg waits for a lock half of timeout_seconds at most, restic not at all.
    site.write([user], timeout_seconds=10)
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    with lock_held(site):
        # The check's stale-lock removal first leaves a live process's lock alone.
        checked = t3backupd(site.config, "offsite", "check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"check failed: locked: {engine} check on {site.backend.repository}: " in (
        checked.stderr
    ), checked.stderr
    again = t3backupd(site.config, "offsite", "check")
    assert again.returncode == 0, again.stdout + again.stderr  # its lock was a dead one's


# A small file system mounted on the repository, in a mount namespace of the test's own.
SMALL = (
    'mount -t tmpfs -o size=512k,mode=0700 t3-small "$1" && shift && "$@" offsite init && '
    'exec "$@" offsite sync'
)


def test_a_full_repository_is_no_space(each_engine: Offsite, make_user: MakeUser) -> None:
    need(os.geteuid() == 0, "needs root (a tmpfs in its own mount namespace)")
    need(shutil.which("unshare") is not None, "needs unshare (util-linux)")
    site = each_engine
    engine = site.backend.engine
    user = make_user()
    create_state_db(user, size_mb=4, seed=71)
    site.write([user])
    name = take_snapshot(site.config, user)
    repository = Path(site.backend.repository)
    repository.mkdir()
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SMALL, "sh",
         str(repository), PYTHON, "-I", "-m", "t3backupd", "-c", str(site.config)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "T3BACKUPD_CONFIG": ""},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"created {engine} repository" in result.stdout, result.stdout + result.stderr
    line = failed_line(result.stdout, user.name)
    upload = ENGINE_FACTS[engine].upload
    prefix = f"{user.name}: FAILED no_space: {engine} {upload} on {repository}: "
    assert line.startswith(prefix), line
    assert "no space left on device" in line.lower(), line
    assert snapshot_files(site.dest / user.name) == [name]  # the local one is untouched


def test_a_stream_that_is_not_sqlite_is_corrupt(each_engine: Offsite, make_user: MakeUser) -> None:
    site = each_engine
    user, name = one_snapshot(site, make_user, seed=69)
    overwrite(site, user, name, b"not a database!!")
    synced = t3backupd(site.config, "offsite", "sync")
    assert synced.returncode == 1
    assert f"{user.name}: FAILED corrupt: {name}: the stream does not start with a SQLite" in (
        synced.stdout
    ), synced.stdout
    assert copies_by_user(site) == {}


def test_an_engine_that_does_not_finish_in_time_is_timeout(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    site = each_engine
    user, _ = one_snapshot(site, make_user, seed=72, size_mb=2)
    assert t3backupd(site.config, "offsite", "sync").returncode == 0
    engine = make_engine(load_config(site.config))
    (copy,) = engine.snapshots(user.name)
    download = engine.start_download(copy)
    # Nobody reads the stream: the engine blocks on a full pipe and never exits.
    with pytest.raises(OffsiteError) as caught:
        download.finish(2)
    assert caught.value.reason == "timeout", caught.value
    assert f"on {site.backend.repository}: no result after" in caught.value.message
    assert download.process.popen.returncode is not None  # stopped and reaped
