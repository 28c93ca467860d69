"""Offsite copies end to end on each engine and back-end (restic on a local path, SFTP
through a real sshd and S3 on `rclone serve s3`; borg on a local path and ssh:// through
a real sshd; all on loopback): real users, real WAL databases, the real CLI spawning real
setuid workers, Debian's restic and borgbackup."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from support.offsite import Offsite, engine_check, stored_records
from support.snapshots import MakeUser, sha256_of, take_snapshot
from support.system import create_state_db, t3backupd

pytestmark = [pytest.mark.root]


def test_round_trip_on_each_backend(each_backend: Offsite, make_user: MakeUser) -> None:
    site = each_backend
    engine = site.backend.engine
    user = make_user()
    create_state_db(user, size_mb=3, seed=11)
    config = site.write([user])
    first = t3backupd(config, "offsite", "init")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"created {engine} repository" in first.stdout
    again = t3backupd(config, "offsite", "init")
    assert again.returncode == 0 and "exists already" in again.stdout, again.stderr

    name = take_snapshot(config, user)
    local = site.dest / user.name
    recorded = (local / (name + ".sha256")).read_text().split()[0]
    size = (local / name).stat().st_size
    synced = t3backupd(config, "offsite", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"{user.name}: ok 1 uploaded" in synced.stdout

    listed = t3backupd(config, "list", "--offsite", "--json")
    assert listed.returncode == 0, listed.stderr
    copies = json.loads(listed.stdout)["users"][0]["snapshots"]
    assert [(c["name"], c["sha256"], c["bytes"]) for c in copies] == [(name, recorded, size)]
    # What the engine itself holds: one copy, one constant path (restic) or an archive
    # named after host, user and snapshot (borg), with its record.
    ((owner, stored_name, words),) = stored_records(site)
    assert (owner, stored_name) == (user.name, name)
    assert re.fullmatch("[0-9a-f]{64}", words.pop("seal", "")), words  # root's seal (issue 24)
    assert words.pop("schema", "").isdigit(), words  # the app's schema version (issue 22)
    if engine == "borg":  # the page size borg chunks at
        assert words.pop("page_size", "") == "4096", words
    assert words == {"sha256": recorded, "size": str(size)}
    # A second sync uploads nothing: what is offsite is read back from the repository.
    again = t3backupd(config, "offsite", "sync")
    assert f"{user.name}: ok 0 uploaded" in again.stdout, again.stdout

    shutil.rmtree(site.dest)
    target = Path(user.home) / "restored.sqlite"
    restored = t3backupd(
        config, "restore", "--user", user.name, "--from", "offsite", "--to", str(target)
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert sha256_of(target) == recorded
    info = os.stat(target)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (user.uid, user.gid, 0o600)
    checked = t3backupd(config, "offsite", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{user.name}: drill ok {name}" in checked.stdout
    direct = engine_check(site)
    assert direct.returncode == 0, direct.stdout + direct.stderr


def test_restore_from_offsite_refuses_an_existing_target(
    offsite: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=12)
    config = offsite.write([user])
    assert t3backupd(config, "offsite", "init").returncode == 0
    take_snapshot(config, user)
    assert t3backupd(config, "offsite", "sync").returncode == 0
    target = Path(user.home) / "exists.sqlite"
    target.write_text("keep me")
    result = t3backupd(
        config, "restore", "--user", user.name, "--from", "offsite", "--to", str(target)
    )
    assert result.returncode == 1
    assert "restore refused (exists)" in result.stderr
    assert target.read_text() == "keep me"


def test_rebuild_from_nothing_lists_and_restores_every_users_history(
    each_engine: Offsite, make_user: MakeUser, sandbox: Path
) -> None:
    """With only the config and the password file, a rebuilt machine lists every copy as
    sealed by root (issue 24: the seal's key comes from the password file) and restores
    each one byte for byte, on each engine."""
    offsite = each_engine
    users = [make_user(), make_user()]
    for index, user in enumerate(users):
        create_state_db(user, size_mb=1, seed=50 + index)
    config = offsite.write(users)
    assert t3backupd(config, "offsite", "init").returncode == 0
    history: dict[str, list[tuple[str, str]]] = {user.name: [] for user in users}
    for _ in range(2):
        time.sleep(1.05)
        assert t3backupd(config, "snapshot").returncode == 0
        assert t3backupd(config, "offsite", "sync").returncode == 0
    for user in users:
        for path in sorted((offsite.dest / user.name).glob("state-*.sqlite")):
            history[user.name].append((path.name, sha256_of(path)))
    # The machine is rebuilt: no dest, no cache, a new config naming the same repository.
    shutil.rmtree(offsite.dest)
    shutil.rmtree(sandbox / "cache", ignore_errors=True)
    fresh = offsite.write(users)
    listed = json.loads(t3backupd(fresh, "list", "--offsite", "--json").stdout)
    assert {
        entry["user"]: sorted((copy["name"], copy["sha256"]) for copy in entry["snapshots"])
        for entry in listed["users"]
    } == history
    assert {copy["trust"] for entry in listed["users"] for copy in entry["snapshots"]} == {"sealed"}
    for user in users:
        for name, digest in history[user.name]:
            target = Path(user.home) / f"rebuilt-{name}"
            result = t3backupd(
                fresh, "restore", "--user", user.name, "--from", "offsite",
                "--snapshot", name, "--to", str(target),
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert sha256_of(target) == digest
    checked = t3backupd(fresh, "offsite", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "check ok" in checked.stdout
    for user in users:
        assert f"{user.name}: drill ok {history[user.name][-1][0]}" in checked.stdout
