"""Every snapshot knows the app's schema version (issue 22): the worker reads it from the
snapshot it has just written, never from the live database. T3 Code's migration table
by default, else SQLite's user_version; `[snapshot] schema_version` names which."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support.snapshots import MakeUser, json_config, snapshot_events
from support.system import PYTHON, create_state_db, live_writer, run_as, state_path, t3backupd

from t3backupd.core.usermap import User


def snapshot_schema(sandbox: Path, user: User, extra: str = "") -> int | None:
    """Take one snapshot of `user` through the real CLI; the schema version it logged."""
    config = json_config(sandbox, [user], extra)
    result = t3backupd(config, "snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    [event] = snapshot_events(result.stderr)
    assert event["status"] == "ok", event
    version = event["schema_version"]
    assert version is None or isinstance(version, int)
    return version


def highest_migration(database: Path) -> int:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return int(
            connection.execute("SELECT max(migration_id) FROM effect_sql_migrations").fetchone()[0]
        )
    finally:
        connection.close()


def plain_database(user: User, user_version: int) -> Path:
    """A WAL database without T3's migration table, at the user's path, owned by them."""
    path = state_path(user)
    run_as(user, ["mkdir", "-p", str(path.parent)])
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(x)'); "
        f"c.execute('PRAGMA user_version={user_version}'); c.commit(); c.close()"
    )
    run_as(user, [PYTHON, "-I", "-c", script, str(path)])
    return path


@pytest.mark.root
def test_a_t3_database_reports_its_highest_migration_under_a_live_writer(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=4, seed=3)
    expected = highest_migration(database)
    assert expected >= 1
    with live_writer(user, database, rate=200) as writer:
        assert snapshot_schema(sandbox, user) == expected
    assert writer.stats["errors"] == 0, writer.stats["error_messages"]


@pytest.mark.root
def test_without_the_migration_table_user_version_is_used(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    plain_database(user, user_version=7)
    assert snapshot_schema(sandbox, user) == 7
    # Told to read the migration table, a database without one has no schema version.
    assert snapshot_schema(sandbox, user, '[snapshot]\nschema_version = "migrations"\n') is None


@pytest.mark.root
def test_the_config_key_can_name_user_version_for_a_t3_database(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=4)
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('PRAGMA user_version=41'); c.close()"
    )
    run_as(user, [PYTHON, "-I", "-c", script, str(database)])
    assert snapshot_schema(sandbox, user, '[snapshot]\nschema_version = "user_version"\n') == 41
    assert snapshot_schema(sandbox, user) == highest_migration(database)


@pytest.mark.root
def test_an_unknown_schema_source_is_one_line_naming_the_key(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    config = json_config(sandbox, [user], '[snapshot]\nschema_version = "rowid"\n')
    result = t3backupd(config, "snapshot")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "snapshot.schema_version" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
