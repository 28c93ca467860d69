"""The schema guard (issue 22): when the app's schema moves forward, the last snapshot of
the old version is kept as `<its time>--schema-<old>`, out of reach of count retention,
and `restore --before-schema N` brings it back. Real T3-shaped database, live writer,
real users, the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.schema import migrate_forward, recorded_digest, schema_of
from support.snapshots import MakeUser, json_config, sha256_of, snapshot_events, take_snapshot
from support.system import create_state_db, live_writer, log_events, run_as, t3backupd

from t3backupd.core.naming import parse_name
from t3backupd.core.usermap import User
from t3backupd_dev.sampledb import content_digest

PASSES_AFTER = 20


def t3_user(
    sandbox: Path, make_user: MakeUser, keep: int, seed: int
) -> tuple[User, Path, Path, Path, int]:
    """A user with a T3-shaped database and a config keeping `keep`: the user, their
    database, the config, their snapshot directory and the database's schema version."""
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=seed)
    config = json_config(sandbox, [user], f"[retention]\nkeep = {keep}\n")
    return user, database, config, sandbox / "dest" / user.name, schema_of(database)


@pytest.mark.root
def test_a_forward_step_keeps_the_old_version_through_retention_and_restores_it(
    sandbox: Path, make_user: MakeUser
) -> None:
    user, database, config, directory, old = t3_user(sandbox, make_user, keep=3, seed=22)
    with live_writer(user, database, rate=100) as writer:
        before = take_snapshot(config, user)
        before_digest = recorded_digest(directory / f"{before}.sha256")
        assert sha256_of(directory / before) == before_digest
        migrate_forward(user, database, old + 1)
        result = t3backupd(config, "snapshot", "--user", user.name)
        assert result.returncode == 0, result.stdout + result.stderr
        [event] = snapshot_events(result.stderr)
        assert event["schema_version"] == old + 1
        guard_parsed = parse_name(before)
        assert guard_parsed is not None
        guard = before.replace(".sqlite", f"--schema-{old}.sqlite")
        assert '"schema guard"' in result.stderr and guard in result.stderr, result.stderr
        for _ in range(PASSES_AFTER):
            take_snapshot(config, user)
    assert writer.stats["errors"] == 0, writer.stats["error_messages"]

    names = sorted(p.name for p in directory.iterdir() if parse_name(p.name) is not None)
    assert before not in names, "count retention pruned the original"
    assert guard in names
    assert len([n for n in names if "--" not in n]) == 3
    assert sha256_of(directory / guard) == before_digest
    assert recorded_digest(directory / f"{guard}.sha256") == before_digest

    target = Path(user.home) / "before-migration.sqlite"
    restored = t3backupd(
        config, "restore", "--user", user.name, "--before-schema", str(old + 1), "--to",
        str(target),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert guard in restored.stdout
    assert sha256_of(target) == before_digest
    assert schema_of(target) == old


@pytest.mark.root
def test_before_schema_with_none_below_is_one_line(sandbox: Path, make_user: MakeUser) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=23)
    config = json_config(sandbox, [user])
    take_snapshot(config, user)
    version = schema_of(database)
    result = t3backupd(
        config, "restore", "--user", user.name, "--before-schema", str(version), "--to",
        str(Path(user.home) / "none.sqlite"),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"below {version}" in lines[0], result.stderr
    for bad in (["--before-schema", "x"], ["--before-schema", "3", "--at", "2026-01-01"]):
        usage = t3backupd(config, "restore", "--user", user.name, *bad, "--to", "/tmp/n")
        assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
        assert "Traceback" not in usage.stderr


def events_named(stderr: str, event: str) -> list[dict[str, object]]:
    return [e for e in log_events(stderr) if e.get("event") == event]


@pytest.mark.root
def test_a_backwards_step_is_said_once_and_holds_retention_until_acknowledged(
    sandbox: Path, make_user: MakeUser
) -> None:
    user, database, config, directory, old = t3_user(sandbox, make_user, keep=2, seed=25)
    take_snapshot(config, user)
    migrate_forward(user, database, old + 1)
    newer = [take_snapshot(config, user) for _ in range(2)]
    guard = next(p.name for p in directory.iterdir() if p.name.endswith(f"--schema-{old}.sqlite"))
    # An old database put back by hand, outside t3backupd (the app is stopped).
    run_as(user, ["rm", "-f", f"{database}-wal", f"{database}-shm"])
    run_as(user, ["cp", str(directory / guard), str(database)])

    said = []
    for _ in range(4):
        result = t3backupd(config, "snapshot", "--user", user.name)
        assert result.returncode == 0, result.stdout + result.stderr
        said += events_named(result.stderr, "schema went backwards")
    assert len(said) == 1, said
    assert said[0]["schema_version"] == old and said[0]["previous_schema_version"] == old + 1
    present = {p.name for p in directory.iterdir()}
    assert set(newer) <= present, "retention pruned a newer-version snapshot during the hold"

    accepted = t3backupd(config, "snapshot", "--user", user.name, "--accept-schema-downgrade")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert events_named(accepted.stderr, "schema downgrade accepted")
    take_snapshot(config, user)
    present = {p.name for p in directory.iterdir()}
    assert not set(newer) & present, "the hold outlived its acknowledgement"
    assert guard in present


@pytest.mark.root
def test_the_runbook_rollback_is_before_schema_in_place_and_then_held(
    sandbox: Path, make_user: MakeUser
) -> None:
    user, database, config, directory, old = t3_user(sandbox, make_user, keep=3, seed=26)
    before = take_snapshot(config, user)
    digest = recorded_digest(directory / f"{before}.sha256")
    migrate_forward(user, database, old + 1)
    take_snapshot(config, user)
    rolled = t3backupd(
        config, "restore", "--user", user.name, "--before-schema", str(old + 1), "--in-place"
    )
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    # The original or its guard (the same bytes, the same time): both are below N.
    assert before.removesuffix(".sqlite") in rolled.stdout
    assert schema_of(database) == old
    # In place, the bytes go through SQLite into the live file: its content is the guard's.
    assert sha256_of(directory / before) == digest
    assert content_digest(database) == content_digest(directory / before)
    result = t3backupd(config, "snapshot", "--user", user.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(events_named(result.stderr, "schema went backwards")) == 1
