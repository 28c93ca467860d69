"""What is borg's alone, on real borg repositories (a local one, and ssh:// through a real
sshd on 127.0.0.1), real users, real WAL databases, the real CLI spawning real setuid
workers: page-size aligned chunking (measured with borg info), the passphrase handed over
by a passphrase command (never in anything a hostile user can read), and SIGTERM ending
an upload without a checkpoint archive. What every engine does (round trip, retention,
each failure reason, hostile users) runs for borg as a parameter of the shared tests."""

from __future__ import annotations

import json
import re
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
    copies_by_user,
    make_offsite,
    one_snapshot,
    overwrite,
)
from support.snapshots import MakeUser, take_snapshot
from support.system import PYTHON, create_state_db, run_as, state_path, t3backupd

from t3backupd.core.usermap import User

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def borg_local(sandbox: Path) -> Iterator[Offsite]:
    with BACKENDS["borg-local"](sandbox) as backend:
        yield make_offsite(sandbox, backend)


@pytest.fixture
def borg_ssh(sandbox: Path) -> Iterator[Offsite]:
    with BACKENDS["borg-ssh"](sandbox) as backend:
        yield make_offsite(sandbox, backend)


def snap(site: Offsite, user: User, label: str | None = None) -> str:
    time.sleep(1.05)  # names have whole seconds
    return take_snapshot(site.config, user, label)


def sync_ok(site: Offsite) -> str:
    result = t3backupd(site.config, "offsite", "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


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


def test_an_aborted_borg_upload_leaves_no_checkpoint_archive(
    borg_local: Offsite, make_user: MakeUser
) -> None:
    """A stream found tampered ends its upload with SIGTERM before EOF: borg commits no
    `.checkpoint` archive of what it read (SIGINT would). The shared part (other users
    finish, nothing kept) is test_offsite_hostile.py's, over each engine."""
    site = borg_local
    mallory, name = one_snapshot(site, make_user, seed=67, size_mb=2)
    overwrite(site, mallory, name, b"X" * 64, offset=8192)
    synced = t3backupd(site.config, "offsite", "sync")
    assert synced.returncode == 1
    assert f"{mallory.name}: FAILED corrupt: {name}: streamed" in synced.stdout, synced.stdout
    assert copies_by_user(site) == {}
    # Not even a checkpoint of the aborted upload is left.
    checkpoints = borg(
        site.backend, site.password, "list", "--consider-checkpoints", "--short",
        site.backend.repository,
    )  # fmt: skip
    assert checkpoints.returncode == 0, checkpoints.stderr
    assert [line for line in checkpoints.stdout.splitlines() if mallory.name in line] == []
