"""A local-path repository that is read-only for t3backupd (as under the unit's
ProtectSystem=strict without a ReadWritePaths= drop-in), on each engine: one clear
line, reason `read_only` (not `locked`, which restic's last line and borg's LockFailed
suggest), and the local snapshot is untouched. The read-only view is a real read-only
bind mount in a mount namespace of the test's own (`unshare --mount`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import need
from support.offsite import Offsite, copies_by_user
from support.snapshots import MakeUser, take_snapshot
from support.system import PYTHON, create_state_db, snapshot_files, t3backupd

from t3backupd.root.offsite.restic import _error_line, classify

pytestmark = [pytest.mark.root]

# Bind the repository onto itself read-only, then run the command in that namespace.
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def in_read_only_view(
    repository: str, config: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY, "sh",
         repository, PYTHON, "-I", "-m", "t3backupd", "-c", str(config), *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "T3BACKUPD_CONFIG": ""},
    )  # fmt: skip


def test_read_only_repository_is_one_read_only_line_and_the_local_snapshot_stays(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    offsite = each_engine
    need(os.geteuid() == 0, "needs root (a bind mount in its own mount namespace)")
    need(shutil.which("unshare") is not None, "needs unshare (util-linux)")
    user = make_user()
    create_state_db(user, size_mb=1, seed=33)
    offsite.write([user])
    assert t3backupd(offsite.config, "offsite", "init").returncode == 0
    name = take_snapshot(offsite.config, user)
    repository = offsite.backend.repository
    before = sorted(str(path) for path in Path(repository).rglob("*"))

    synced = in_read_only_view(repository, offsite.config, "offsite", "sync")
    assert synced.returncode == 1, synced.stdout + synced.stderr
    (line,) = [line for line in synced.stdout.splitlines() if line.startswith(user.name)]
    assert line.startswith(
        f"{user.name}: FAILED read_only: {repository} is on a read-only file system"
    ), line
    assert f"ReadWritePaths={repository}" in line
    listed = in_read_only_view(repository, offsite.config, "list", "--offsite")
    assert listed.returncode == 1
    assert listed.stderr.count("\n") == 1 and "read_only:" in listed.stderr, listed.stderr

    # Nothing was written; the local snapshot is intact; writable again, it uploads.
    assert sorted(str(path) for path in Path(repository).rglob("*")) == before
    assert snapshot_files(offsite.dest / user.name) == [name]
    assert copies_by_user(offsite) == {}
    again = t3backupd(offsite.config, "offsite", "sync")
    assert again.returncode == 0 and f"{user.name}: ok 1 uploaded" in again.stdout, again.stdout


def test_restic_read_only_output_is_read_only_not_locked() -> None:
    # What restic 0.14 prints when its lock cannot be written (retries, a stack trace,
    # then "unable to create lock in backend"), here for a repository at /srv/r.
    stderr = (
        b"Save(<lock/61db466a89>) returned error, retrying after 552.330144ms: open "
        b"/srv/r/locks/61db46-tmp-3706843098: read-only file system\n"
        b"open /srv/r/locks/61db46-tmp-4223034768: read-only file system\n"
        b"github.com/restic/restic/internal/backend/local.(*Local).Save\n"
        b"\tgithub.com/restic/restic/internal/backend/local/local.go:153\n"
        b"unable to create lock in backend\n"
    )
    assert classify(stderr.decode()) == "read_only"
    assert classify("unable to create lock in backend: repository is already locked") == "locked"
    line = _error_line(stderr, "/srv/r", "/srv/r")
    assert line == "open /srv/r/locks/61db46-tmp-4223034768: read-only file system"
