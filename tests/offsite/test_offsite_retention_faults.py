"""Offsite retention per user, backfill and wrong password on each engine, and faults
mid-upload (back-end stopped, restic SIGKILLed): the real CLI, real users, real
repositories."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.offsite import (
    BACKENDS,
    ENGINE_FACTS,
    Offsite,
    copies_by_user,
    make_offsite,
    need_restic,
    restic,
    restic_pids,
)
from support.snapshots import MakeUser, take_snapshot
from support.system import create_state_db, snapshot_files, t3backupd

from t3backupd.core.usermap import User

pytestmark = [pytest.mark.root, pytest.mark.slow]


def snap(site: Offsite, user: User, label: str | None = None) -> str:
    time.sleep(1.05)  # names have whole seconds
    return take_snapshot(site.config, user, label)


def sync_ok(site: Offsite) -> str:
    result = t3backupd(site.config, "offsite", "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_retention_is_per_user_and_keeps_labelled_copies(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    offsite = each_engine
    alice, bob = make_user(), make_user()
    for index, user in enumerate((alice, bob)):
        create_state_db(user, size_mb=1, seed=20 + index)
    offsite.write([alice, bob], keep_last=2, keep_daily=0, keep_weekly=0, keep_monthly=0)
    assert t3backupd(offsite.config, "offsite", "init").returncode == 0
    # Bob's two copies are older than all of Alice's: a forget (restic) or delete (borg)
    # grouped across users would take them.
    bob_names = [snap(offsite, bob), snap(offsite, bob)]
    sync_ok(offsite)
    labelled = snap(offsite, alice, label="pre-upgrade")
    alice_names = []
    for _ in range(4):
        alice_names.append(snap(offsite, alice))
        sync_ok(offsite)
    copies = copies_by_user(offsite)
    assert copies[bob.name] == sorted(bob_names)
    assert copies[alice.name] == sorted([labelled, *alice_names[-2:]])
    # Listing shows the label; the labelled copy is restorable by its label.
    target = Path(alice.home) / "pre.sqlite"
    restored = t3backupd(
        offsite.config, "restore", "--user", alice.name, "--from", "offsite",
        "--snapshot", "pre-upgrade", "--to", str(target),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert labelled in restored.stdout


def test_backfill_uploads_snapshots_made_while_the_repository_was_away(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    offsite = each_engine
    user = make_user()
    create_state_db(user, size_mb=1, seed=30)
    offsite.write([user])
    repository = Path(offsite.backend.repository)
    made = [snap(offsite, user), snap(offsite, user)]  # before the repository exists
    away = t3backupd(offsite.config, "offsite", "sync")
    assert away.returncode == 1
    assert f"{user.name}: FAILED no_repository:" in away.stdout, away.stdout
    assert not repository.exists()
    assert t3backupd(offsite.config, "offsite", "init").returncode == 0
    out = sync_ok(offsite)
    assert f"{user.name}: ok 2 uploaded" in out
    assert copies_by_user(offsite)[user.name] == sorted(made)


def test_wrong_password_is_auth_in_one_line(each_engine: Offsite, make_user: MakeUser) -> None:
    offsite = each_engine
    engine = offsite.backend.engine
    facts = ENGINE_FACTS[engine]
    user = make_user()
    create_state_db(user, size_mb=1, seed=31)
    offsite.write([user])
    assert t3backupd(offsite.config, "offsite", "init").returncode == 0
    name = take_snapshot(offsite.config, user)
    offsite.password.write_text("not the password\n")
    result = t3backupd(offsite.config, "offsite", "sync")
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(user.name)]
    repository = offsite.backend.repository
    assert line.startswith(f"{user.name}: FAILED auth: {engine} {facts.listing} on {repository}: ")
    assert facts.auth_word in line
    listed = t3backupd(offsite.config, "list", "--offsite")
    assert listed.returncode == 1
    assert listed.stderr.count("\n") == 1 and "auth:" in listed.stderr, listed.stderr
    assert snapshot_files(offsite.dest / user.name) == [name]  # the local one is untouched


def test_secret_files_must_be_root_only(offsite: Offsite, make_user: MakeUser) -> None:
    user = make_user()
    offsite.write([user])
    os.chmod(offsite.password, 0o644)
    result = t3backupd(offsite.config, "check-config")
    assert result.returncode == 2
    assert "offsite.password_file" in result.stderr and "chmod 0600" in result.stderr
    os.chmod(offsite.password, 0o600)
    os.chown(offsite.password, user.uid, user.gid)
    result = t3backupd(offsite.config, "check-config")
    assert result.returncode == 2
    assert f"owned by uid {user.uid}" in result.stderr, result.stderr


def _restic_backup_pids(repository: str) -> list[int]:
    return restic_pids(repository, r" backup .*--stdin")


def _wait_for_upload(repository: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _restic_backup_pids(repository)
        if pids:
            time.sleep(1.0)  # well into the upload (limited to 1 MiB/s)
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("restic backup never started")


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("local", "restic_killed"),
        ("sftp", "restic_killed"),
        ("s3", "restic_killed"),
        ("sftp", "backend_stopped"),  # a local path cannot be stopped
        ("s3", "backend_stopped"),
    ],
)
def test_fault_mid_upload_leaves_nothing_partial_and_the_next_sync_heals(
    sandbox: Path, make_user: MakeUser, kind: str, fault: str
) -> None:
    need_restic()
    with BACKENDS[kind](sandbox) as backend:
        _fault_mid_upload(make_offsite(sandbox, backend), make_user, fault)


def _fault_mid_upload(site: Offsite, make_user: MakeUser, fault: str) -> None:
    user = make_user()
    create_state_db(user, size_mb=12, seed=32)
    site.write([user], limit_upload_kib=1024, timeout_seconds=120)
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    name = take_snapshot(site.config, user)
    outcome: list[subprocess.CompletedProcess[str]] = []
    syncing = threading.Thread(
        target=lambda: outcome.append(t3backupd(site.config, "offsite", "sync"))
    )
    syncing.start()
    pid = _wait_for_upload(site.backend.repository)
    if fault == "restic_killed":
        os.kill(pid, signal.SIGKILL)
    else:
        site.backend.stop()
    syncing.join(200)
    (result,) = outcome
    assert result.returncode == 1, result.stdout
    assert f"{user.name}: FAILED" in result.stdout
    if site.backend.stopped:
        site.backend.start()
    assert copies_by_user(site) == {}  # nothing partial is listed
    assert snapshot_files(site.dest / user.name) == [name]
    healed = t3backupd(site.config, "offsite", "sync")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert copies_by_user(site) == {user.name: [name]}
    # No restic runs now: a lock still listed is stale (a listing that just exited, whose
    # removal the S3 server has not shown yet, or a SIGKILLed upload), as each pass
    # would find it; `unlock` removes only such locks.
    restic(site.backend, site.password, "unlock")
    checked = restic(site.backend, site.password, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_check_after_a_killed_engine_is_not_failed_by_its_stale_lock(
    offsite: Offsite, make_user: MakeUser
) -> None:
    """A restic killed while it held its lock (a crash, the OOM killer, a stop within its
    first moments) leaves the lock file behind. The check needs the repository to itself:
    it removes the dead process's lock first, as every pass does, instead of failing as
    `locked` and paging the operator for nothing."""
    user = make_user()
    create_state_db(user, size_mb=1, seed=37)
    offsite.write([user])
    assert t3backupd(offsite.config, "offsite", "init").returncode == 0
    locks = Path(offsite.backend.repository) / "locks"
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root"}
    holder = subprocess.Popen(
        ["restic", "--repo", offsite.backend.repository, "--password-file",
         str(offsite.password), "--no-cache", "backup", "--stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=environment,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(locks.iterdir()):
            assert holder.poll() is None and time.monotonic() < deadline, "restic took no lock"
            time.sleep(0.05)
    finally:
        holder.kill()  # SIGKILL: restic cannot remove its lock
        holder.wait(30)
    assert any(locks.iterdir()), "the killed restic's lock is gone already"
    checked = t3backupd(offsite.config, "offsite", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "check ok" in checked.stdout
    assert not any(locks.iterdir())
