"""The borg engine end to end: a local borg repository and an ssh:// one through a real
sshd on 127.0.0.1 (borg serve on the server side), real users, real WAL databases, the
real CLI spawning real setuid workers, Debian's borgbackup. Retention per user, page-size
aligned chunking (measured with borg info), wrong passphrase, unreachable server,
secrets out of reach of a hostile user, a tampered stream not kept."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.offsite import (
    BACKENDS,
    Offsite,
    borg,
    borg_archives,
    make_offsite,
)
from support.snapshots import MakeUser, sha256_of, take_snapshot
from support.system import PYTHON, create_state_db, run_as, snapshot_files, state_path, t3backupd

from t3backupd.core.usermap import User

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(params=["borg-local", "borg-ssh"])
def borg_site(request: pytest.FixtureRequest, sandbox: Path) -> Iterator[Offsite]:
    with BACKENDS[request.param](sandbox) as backend:
        yield make_offsite(sandbox, backend)


@pytest.fixture
def borg_local(sandbox: Path) -> Iterator[Offsite]:
    with BACKENDS["borg-local"](sandbox) as backend:
        yield make_offsite(sandbox, backend)


@pytest.fixture
def borg_ssh(sandbox: Path) -> Iterator[Offsite]:
    with BACKENDS["borg-ssh"](sandbox) as backend:
        yield make_offsite(sandbox, backend)


def comment_of(archive: dict[str, object]) -> dict[str, str]:
    words = str(archive["comment"]).split()
    assert words[0] == "t3backupd"
    return dict(word.split("=", 1) for word in words[1:])


def copies_by_user(site: Offsite) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for archive in borg_archives(site.backend, site.password):
        _, _, user, name = str(archive["name"]).split("+", 3)
        found.setdefault(user, []).append(name)
    return {user: sorted(names) for user, names in found.items()}


def snap(site: Offsite, user: User, label: str | None = None) -> str:
    time.sleep(1.05)  # names have whole seconds
    return take_snapshot(site.config, user, label)


def sync_ok(site: Offsite) -> str:
    result = t3backupd(site.config, "offsite", "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_borg_round_trip_local_and_over_ssh(borg_site: Offsite, make_user: MakeUser) -> None:
    site = borg_site
    user = make_user()
    create_state_db(user, size_mb=3, seed=61)
    config = site.write([user])
    first = t3backupd(config, "offsite", "init")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created borg repository" in first.stdout
    again = t3backupd(config, "offsite", "init")
    assert again.returncode == 0 and "exists already" in again.stdout, again.stderr

    name = take_snapshot(config, user)
    local = site.dest / user.name
    recorded = (local / (name + ".sha256")).read_text().split()[0]
    size = (local / name).stat().st_size
    synced = sync_ok(site)
    assert f"{user.name}: ok 1 uploaded" in synced

    listed = t3backupd(config, "list", "--offsite", "--json")
    assert listed.returncode == 0, listed.stderr
    copies = json.loads(listed.stdout)["users"][0]["snapshots"]
    assert [(c["name"], c["sha256"], c["bytes"]) for c in copies] == [(name, recorded, size)]
    # What borg itself holds: one archive named after host, user and snapshot.
    (stored,) = borg_archives(site.backend, site.password)
    assert re.fullmatch(
        rf"t3backupd\+[^+]+\+{re.escape(user.name)}\+{re.escape(name)}", stored["name"]
    )
    comment = comment_of(stored)
    assert re.fullmatch("[0-9a-f]{64}", comment.pop("seal", "")), comment  # issue 24
    assert comment.pop("schema", "").isdigit(), comment  # the app's schema (issue 22)
    assert comment == {"sha256": recorded, "size": str(size), "page_size": "4096"}
    again = t3backupd(config, "offsite", "sync")
    assert f"{user.name}: ok 0 uploaded" in again.stdout, again.stdout

    shutil.rmtree(site.dest)
    target = Path(user.home) / "restored.sqlite"
    restored = t3backupd(
        config, "restore", "--user", user.name, "--from", "offsite", "--to", str(target)
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert sha256_of(target) == recorded
    checked = t3backupd(config, "offsite", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{user.name}: drill ok {name}" in checked.stdout
    direct = borg(site.backend, site.password, "check", site.backend.repository)
    assert direct.returncode == 0, direct.stderr


def test_borg_retention_is_per_user_and_keeps_labelled_copies(
    borg_local: Offsite, make_user: MakeUser
) -> None:
    site = borg_local
    alice, bob = make_user(), make_user()
    for index, user in enumerate((alice, bob)):
        create_state_db(user, size_mb=1, seed=62 + index)
    site.write([alice, bob], keep_last=2, keep_daily=0, keep_weekly=0, keep_monthly=0)
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    # Bob's copies are older than all of Alice's: a delete across users would take them.
    bob_names = [snap(site, bob), snap(site, bob)]
    sync_ok(site)
    labelled = snap(site, alice, label="pre-upgrade")
    alice_names = []
    for _ in range(4):
        alice_names.append(snap(site, alice))
        sync_ok(site)
    copies = copies_by_user(site)
    assert copies[bob.name] == sorted(bob_names)
    assert copies[alice.name] == sorted([labelled, *alice_names[-2:]])
    target = Path(alice.home) / "pre.sqlite"
    restored = t3backupd(
        site.config, "restore", "--user", alice.name, "--from", "offsite",
        "--snapshot", "pre-upgrade", "--to", str(target),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert labelled in restored.stdout


# A database of incompressible rows with a chosen page size, and a small change to it:
# CHANGED rows rewritten, spread over the file.
ROWS, CHANGED = 4000, 16
DB_SCRIPT = r"""
import os, sqlite3, sys
path, page, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows, step = int(sys.argv[4]), int(sys.argv[5])
db = sqlite3.connect(path)
if mode == "create":
    db.execute(f"PRAGMA page_size={page}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE m(id INTEGER PRIMARY KEY, body BLOB)")
    with db:
        db.executemany("INSERT INTO m(body) VALUES (?)", [(os.urandom(1000),) for _ in range(rows)])
else:
    with db:
        for row in range(1, rows, step):
            db.execute("UPDATE m SET body = ? WHERE id = ?", (os.urandom(1000), row))
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print(db.execute("PRAGMA page_size").fetchone()[0])
"""


def _db(user: User, page_size: int, mode: str) -> int:
    path = state_path(user)
    run_as(user, ["mkdir", "-p", str(path.parent)])
    result = run_as(
        user,
        [
            PYTHON,
            "-I",
            "-c",
            DB_SCRIPT,
            str(path),
            str(page_size),
            mode,
            str(ROWS),
            str(ROWS // CHANGED),
        ],
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def _added(out: str, user: User) -> int:
    match = re.search(rf"{re.escape(user.name)}: ok 1 uploaded \((\d+) bytes added\)", out)
    assert match is not None, out
    return int(match.group(1))


@pytest.mark.parametrize("page_size", [4096, 8192])
def test_borg_chunks_at_the_databases_page_size(
    borg_local: Offsite, make_user: MakeUser, page_size: int
) -> None:
    site = borg_local
    user = make_user()
    assert _db(user, page_size, "create") == page_size
    site.write([user])
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    first = snap(site, user)
    size = (site.dest / user.name / first).stat().st_size
    added_first = _added(sync_ok(site), user)
    _db(user, page_size, "change")
    second = snap(site, user)
    added_second = _added(sync_ok(site), user)
    # Random rows do not compress: the first copy adds about the whole database; the
    # second only the pages of CHANGED rows plus the b-tree pages above them.
    assert added_first > 0.8 * size, (added_first, size)
    budget = (3 * CHANGED + 8) * page_size  # row pages, their parents, header, archive
    assert added_second < min(budget, 0.1 * size), (added_second, budget, size)
    for name in (first, second):
        archive = next(
            a["name"]
            for a in borg_archives(site.backend, site.password)
            if str(a["name"]).endswith(f"+{name}")
        )
        info = borg(
            site.backend, site.password, "info", "--json", f"{site.backend.repository}::{archive}"
        )
        assert info.returncode == 0, info.stderr
        (details,) = json.loads(info.stdout)["archives"]
        assert details["chunker_params"][:2] == ["fixed", page_size]
    print(f"page_size {page_size}: db {size} B, added {added_first} B then {added_second} B")


def test_borg_wrong_passphrase_is_auth_in_one_line(
    borg_local: Offsite, make_user: MakeUser
) -> None:
    site = borg_local
    user = make_user()
    create_state_db(user, size_mb=1, seed=64)
    site.write([user])
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    name = take_snapshot(site.config, user)
    site.password.write_text("not the passphrase\n")
    result = t3backupd(site.config, "offsite", "sync")
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(user.name)]
    assert line.startswith(f"{user.name}: FAILED auth: borg list on {site.backend.repository}: ")
    assert "incorrect" in line
    listed = t3backupd(site.config, "list", "--offsite")
    assert listed.returncode == 1
    assert listed.stderr.count("\n") == 1 and "auth:" in listed.stderr, listed.stderr
    assert snapshot_files(site.dest / user.name) == [name]


def test_borg_unreachable_sshd_is_unreachable(borg_ssh: Offsite, make_user: MakeUser) -> None:
    site = borg_ssh
    user = make_user()
    create_state_db(user, size_mb=1, seed=65)
    site.write([user])
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    take_snapshot(site.config, user)
    site.backend.stop()
    result = t3backupd(site.config, "offsite", "sync")
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(user.name)]
    assert line.startswith(f"{user.name}: FAILED unreachable: borg list on "), line
    site.backend.start()
    assert f"{user.name}: ok 1 uploaded" in sync_ok(site)


SNOOP = r"""
import json, os, sys, time
secrets_ = [line.encode() for line in sys.stdin.read().split()]
found = {"files": [], "leaks": [], "borg_cmdlines": 0, "worker_cmdlines": 0}
try:
    open(sys.argv[1], "rb").read()
    found["files"].append(sys.argv[1])
except OSError:
    pass
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not found["borg_cmdlines"]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{pid}/{name}", "rb").read()
            except OSError:
                continue
            if name == "cmdline" and b"borg" in data and b"create" in data:
                found["borg_cmdlines"] += 1
            if name == "cmdline" and b"t3backupd.worker" in data:
                found["worker_cmdlines"] += 1
            for secret in secrets_:
                if secret in data:
                    found["leaks"].append(f"{pid}/{name}")
    time.sleep(0.05)
print(json.dumps(found))
"""


def test_borg_user_cannot_read_the_passphrase_anywhere(
    borg_ssh: Offsite, make_user: MakeUser
) -> None:
    site = borg_ssh
    user = make_user()
    create_state_db(user, size_mb=20, seed=66)
    site.write([user], limit_upload_kib=2048)
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    take_snapshot(site.config, user)
    password = site.password.read_text().strip()
    outcome: list[object] = []
    syncing = threading.Thread(
        target=lambda: outcome.append(t3backupd(site.config, "offsite", "sync"))
    )
    syncing.start()
    snooped = run_as(user, [PYTHON, "-I", "-c", SNOOP, str(site.password)], input=f"{password}\n")
    syncing.join(180)
    found = json.loads(snooped.stdout)
    assert found["files"] == []
    assert found["borg_cmdlines"] >= 1  # borg was running and visible...
    assert found["leaks"] == []  # ...and the passphrase was in nothing the user could read


def test_borg_tampered_snapshot_is_not_kept_and_other_users_finish(
    borg_local: Offsite, make_user: MakeUser
) -> None:
    site = borg_local
    mallory, bob = make_user(), make_user()
    create_state_db(mallory, size_mb=2, seed=67)
    create_state_db(bob, size_mb=2, seed=68)
    site.write([mallory, bob])
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    assert t3backupd(site.config, "snapshot").returncode == 0
    (name,) = [p.name for p in (site.dest / mallory.name).glob("state-*.sqlite")]
    script = "import sys; f = open(sys.argv[1], 'r+b'); f.seek(8192); f.write(b'X' * 64); f.close()"
    run_as(mallory, [PYTHON, "-I", "-c", script, str(site.dest / mallory.name / name)])
    synced = t3backupd(site.config, "offsite", "sync")
    assert synced.returncode == 1
    assert f"{mallory.name}: FAILED corrupt: {name}: streamed" in synced.stdout, synced.stdout
    assert f"{bob.name}: ok 1 uploaded" in synced.stdout
    assert list(copies_by_user(site)) == [bob.name]
    # Not even a checkpoint of the aborted upload is left.
    checkpoints = borg(
        site.backend, site.password, "list", "--consider-checkpoints", "--short",
        site.backend.repository,
    )  # fmt: skip
    assert checkpoints.returncode == 0, checkpoints.stderr
    assert [line for line in checkpoints.stdout.splitlines() if mallory.name in line] == []


def test_a_stream_that_is_not_sqlite_is_corrupt(borg_local: Offsite, make_user: MakeUser) -> None:
    site = borg_local
    user = make_user()
    create_state_db(user, size_mb=1, seed=69)
    site.write([user])
    assert t3backupd(site.config, "offsite", "init").returncode == 0
    name = take_snapshot(site.config, user)
    script = "import sys; f = open(sys.argv[1], 'r+b'); f.write(b'not a database!!'); f.close()"
    run_as(user, [PYTHON, "-I", "-c", script, str(site.dest / user.name / name)])
    synced = t3backupd(site.config, "offsite", "sync")
    assert synced.returncode == 1
    assert f"{user.name}: FAILED corrupt: {name}: the stream does not start with a SQLite" in (
        synced.stdout
    ), synced.stdout
    assert copies_by_user(site) == {}
