"""Schema steps of a T3-shaped database, as the app makes them (issue 22 tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from support.system import PYTHON, run_as
from t3backupd.core.usermap import User


def migrate_forward(user: User, database: Path, version: int) -> None:
    """A real forward migration, as the app runs one: a schema change and its
    `effect_sql_migrations` row, in one transaction, by the user."""
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None);"
        "c.execute('BEGIN IMMEDIATE');"
        "c.execute('CREATE TABLE guard_test_migration (id INTEGER PRIMARY KEY, note TEXT)');"
        "c.execute('INSERT INTO effect_sql_migrations (migration_id, name) VALUES (?, ?)',"
        " (int(sys.argv[2]), 'guard_test_migration'));"
        "c.execute('COMMIT'); c.close()"
    )
    run_as(user, [PYTHON, "-I", "-c", script, str(database), str(version)])


def schema_of(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT max(migration_id) FROM effect_sql_migrations").fetchone()
        return int(row[0])
    finally:
        connection.close()


def recorded_digest(checksum: Path) -> str:
    return checksum.read_text().split()[0]
