"""Issue 24: a restore trusts only what root uploaded, even from a repository host that
lies. Each copy carries a seal (an HMAC over user, name, size, sha256, schema version,
keyed from the password file); a copy whose record was rewritten, renamed into another
user, or added by hand does not verify: `restore --from offsite` refuses it in one
line, `list --offsite` marks it, `offsite check` counts it, and the live database stays
byte-identical. Real users, real restic and borg repositories.

The liar writes with the engines' own upload path (as anyone holding the repository's
credentials can), so each forged copy is exactly what the engine would store."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from support.offsite import Offsite
from support.snapshots import MakeUser, take_snapshot
from support.system import create_state_db, run_as, t3backupd

from t3backupd.core.config import load_config
from t3backupd.core.naming import parse_name
from t3backupd.core.usermap import User
from t3backupd.root.offsite import make_engine
from t3backupd.root.offsite.engine import OffsiteSnapshot, SnapshotMeta

pytestmark = [pytest.mark.root]


def said(stderr: str) -> list[str]:
    """What the CLI said on stderr (its JSON log events left out)."""
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


def ok(config: Path, *args: str) -> str:
    result = t3backupd(config, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def copies(config: Path) -> list[OffsiteSnapshot]:
    return make_engine(load_config(config)).snapshots()


def store(config: Path, meta: SnapshotMeta, data: bytes) -> None:
    """Put `data` in the repository as a copy recorded as `meta`, with the engine's own
    upload (what anyone with write access to the repository can do)."""
    engine = make_engine(load_config(config))
    upload = engine.start_upload(replace(meta, page_size=4096))
    view = memoryview(data)
    while view:
        view = view[os.write(upload.fd, view) :]
    upload.commit(120)


def forget(config: Path, copy: OffsiteSnapshot) -> None:
    make_engine(load_config(config)).forget([copy.id])


def change_database(user: User, database: Path) -> None:
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('CREATE TABLE IF NOT EXISTS seal_probe(x)'); "
        "c.execute('INSERT INTO seal_probe VALUES (1)'); c.commit(); c.close()"
    )
    run_as(user, ["python3", "-c", script, str(database)])


def live_bytes(database: Path) -> tuple[bytes, bytes]:
    wal = database.with_name(database.name + "-wal")
    return database.read_bytes(), (wal.read_bytes() if wal.exists() else b"")


def site(each_engine: Offsite, users: list[User]) -> Path:
    config = each_engine.write(users)
    ok(config, "offsite", "init")
    return config


def assert_refused(config: Path, user: User, database: Path, name: str) -> None:
    """`restore --from offsite --in-place` of `name` fails in one line; nothing moved."""
    before = live_bytes(database)
    result = t3backupd(
        config, "restore", "--user", user.name, "--from", "offsite", "--snapshot", name,
        "--in-place",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = said(result.stderr)
    assert len(lines) == 1 and "does not verify" in lines[0] and name in lines[0], lines
    assert "Traceback" not in result.stderr
    assert live_bytes(database) == before


def assert_check_counts(config: Path, user: User, name: str) -> None:
    result = t3backupd(config, "offsite", "check")
    assert result.returncode == 1, result.stdout + result.stderr
    drill = [line for line in result.stdout.splitlines() if line.startswith(f"{user.name}: drill")]
    assert drill and "FAILED" in drill[0] and "untrusted" in drill[0] and name in drill[0], drill
    listed = ok(config, "list", "--offsite", "--json")
    trust = {
        entry["name"]: entry["trust"]
        for block in json.loads(listed)["users"]
        if block["user"] == user.name
        for entry in block["snapshots"]
    }
    assert trust.get(name) == "forged", trust


def test_a_genuine_copy_is_sealed_and_restores(each_engine: Offsite, make_user: MakeUser) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=31)
    config = site(each_engine, [user])
    name = take_snapshot(config, user)
    ok(config, "offsite", "sync")
    [copy] = copies(config)
    assert copy.meta.name == name and len(copy.meta.seal) == 64
    listed = ok(config, "list", "--offsite")
    assert "UNTRUSTED" not in listed and "no seal" not in listed
    target = Path(user.home) / "restored.sqlite"
    ok(config, "restore", "--user", user.name, "--from", "offsite", "--to", str(target))
    local = each_engine.dest / user.name / name
    assert (
        hashlib.sha256(target.read_bytes()).hexdigest()
        == hashlib.sha256(local.read_bytes()).hexdigest()
    )
    assert "ok" in ok(config, "offsite", "check")


def test_a_rewritten_record_with_matching_bytes_is_refused(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=32)
    config = site(each_engine, [user])
    name = take_snapshot(config, user)
    ok(config, "offsite", "sync")
    [genuine] = copies(config)
    # The host swaps in other bytes under the same name, with a size and sha256 that match
    # them, and keeps the genuine seal.
    other = bytearray((each_engine.dest / user.name / name).read_bytes())
    other[len(other) // 2] ^= 0xFF
    forget(config, genuine)
    forged = replace(genuine.meta, sha256=hashlib.sha256(other).hexdigest(), size=len(other))
    store(config, forged, bytes(other))
    change_database(user, database)
    assert_refused(config, user, database, name)
    assert_check_counts(config, user, name)


def test_a_copy_renamed_into_another_user_is_refused(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    alice, bob = make_user(), make_user()
    create_state_db(alice, size_mb=1, seed=33)
    bob_db = create_state_db(bob, size_mb=1, seed=34)
    config = site(each_engine, [alice, bob])
    name = take_snapshot(config, alice)
    ok(config, "offsite", "sync")
    [alices] = copies(config)
    data = (each_engine.dest / alice.name / name).read_bytes()
    store(config, replace(alices.meta, user=bob.name), data)  # seal and all
    assert_refused(config, bob, bob_db, name)
    assert_check_counts(config, bob, name)


def test_a_copy_added_by_hand_is_refused_and_latest_skips_it(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=35)
    config = site(each_engine, [user])
    name = take_snapshot(config, user)
    ok(config, "offsite", "sync")
    [genuine] = copies(config)
    # Valid-looking tags, no seal, named as the newest copy.
    data = bytearray((each_engine.dest / user.name / name).read_bytes())
    data[-1] ^= 0x01
    planted = "state-20991231T000000Z.sqlite"
    meta = SnapshotMeta(
        user.name, planted, 4102358400.0, len(data), hashlib.sha256(data).hexdigest()
    )
    store(config, meta, bytes(data))
    assert_refused(config, user, database, planted)
    assert_check_counts(config, user, planted)
    # `latest` restores the newest copy that verifies and says what it skipped.
    target = Path(user.home) / "latest.sqlite"
    result = t3backupd(
        config, "restore", "--user", user.name, "--from", "offsite", "--to", str(target)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(
        "skipped 1 newer untrusted" in line and planted in line for line in said(result.stderr)
    )
    assert hashlib.sha256(target.read_bytes()).hexdigest() == genuine.meta.sha256


def test_a_copy_from_before_seals_restores_with_one_warning(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=36)
    config = site(each_engine, [user])
    name = take_snapshot(config, user)
    data = (each_engine.dest / user.name / name).read_bytes()
    meta = SnapshotMeta(user.name, name, 0.0, len(data), hashlib.sha256(data).hexdigest())
    parsed = parse_name(name)
    assert parsed is not None
    store(config, replace(meta, time=parsed.time.timestamp()), data)  # as an old release did
    listed = ok(config, "list", "--offsite")
    assert "no seal" in listed
    target = Path(user.home) / "legacy.sqlite"
    result = t3backupd(
        config, "restore", "--user", user.name, "--from", "offsite", "--to", str(target)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in said(result.stderr) if "no seal" in line]
    assert len(warnings) == 1 and name in warnings[0], said(result.stderr)
    assert target.read_bytes() == data
