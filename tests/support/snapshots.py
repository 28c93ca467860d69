"""What a pass leaves in a user's backup dir, and how tests make and damage it: shared by
the integration and fault suites (real users, the real CLI; see support.system)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.system import (
    create_state_db,
    log_events,
    make_sandbox,
    sha256sum_check,
    snapshot_files,
    t3backupd,
    user_factory,
    write_config,
)
from t3backupd.core.naming import TEMP_PREFIX, TEMP_SUFFIX
from t3backupd.core.usermap import User

MakeUser = Callable[[], User]
JSON_LOG = '[log]\nformat = "json"\n'


# --- setting up ------------------------------------------------------------------------------


def json_config(
    directory: Path, users: list[User], extra: str = "", dest: Path | None = None, **kwargs: str
) -> Path:
    """usermap + config.toml in `directory` (made 0755 if missing): the `extra` sections,
    then JSON logs; dest is `<directory>/dest` unless given. Returns the config path."""
    directory.mkdir(mode=0o755, exist_ok=True)
    dest = directory / "dest" if dest is None else dest
    return write_config(directory, users, dest, extra=extra + JSON_LOG, **kwargs)


@dataclass
class UserSource:
    """A sandbox and one real user with a database in it, shared by a module's tests."""

    sandbox: Path
    user: User
    database: Path
    source_bytes: int  # the database's size once made


@contextmanager
def user_source(size_mb: float, seed: int) -> Iterator[UserSource]:
    """A fresh sandbox and user with a `size_mb` database; all removed afterwards."""
    with make_sandbox() as sandbox, user_factory() as factory:
        user = factory()
        database = create_state_db(user, size_mb=size_mb, seed=seed)
        yield UserSource(sandbox, user, database, database.stat().st_size)


def take_snapshot(config: Path, user: User, label: str | None = None) -> str:
    """One successful `snapshot --user` pass (fails the test otherwise); the name published."""
    args = ["snapshot", "--user", user.name] + (["--label", label] if label else [])
    result = t3backupd(config, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()[2]


# --- looking -------------------------------------------------------------------------------


def temps_in(directory: Path) -> list[str]:
    """The worker's hidden temp files in `directory`, sorted."""
    return sorted(name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX))


def assert_verified(user: User, directory: Path) -> list[str]:
    """Every published snapshot passes the real `sha256sum -c`. Returns the names."""
    names = snapshot_files(directory)
    for name in names:
        check = sha256sum_check(user, directory, name)
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"
    return names


def published_state(user: User, directory: Path) -> dict[str, str]:
    """Every published snapshot with its checksum line; each must pass the real
    `sha256sum -c`, so an unchanged line means unchanged content."""
    return {
        name: (directory / (name + ".sha256")).read_text()
        for name in assert_verified(user, directory)
    }


def snapshot_events(stderr: str) -> list[dict[str, Any]]:
    """The `snapshot` log events of a CLI run's stderr."""
    return [event for event in log_events(stderr) if event.get("event") == "snapshot"]


def snapshot_outcomes(stderr: str) -> dict[str, tuple[str, str | None]]:
    """user -> (status, reason) of each `snapshot` log event of a CLI run's stderr."""
    return {event["user"]: (event["status"], event["reason"]) for event in snapshot_events(stderr)}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a worker at work ------------------------------------------------------------------------


def worker_pids(user: User) -> list[int]:
    """The pids of the user's snapshot workers running now."""
    found = subprocess.run(
        ["pgrep", "-u", str(user.uid), "-f", "t3backupd.worker"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def wait_for_partial_copy(
    directory: Path, source_bytes: int, timeout: float = 60
) -> tuple[str, int]:
    """(name, size) of the worker's temp copy once it is part-way written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if directory.is_dir():
            for name in temps_in(directory):
                if not name.endswith(TEMP_SUFFIX):
                    continue
                try:
                    size = os.lstat(directory / name).st_size
                except FileNotFoundError:
                    continue
                if 0 < size < source_bytes // 2:
                    return name, size
        time.sleep(0.001)
    raise AssertionError("never saw the copy in progress")


# --- damage ----------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    """Invert the byte at `offset` of `path`, in place."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


# As the user: take SQLite's exclusive lock on the source, write, and hold it (a worker
# then waits on the lock until its deadline or a stop).
HOLD_EXCLUSIVE_LOCK = r"""
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA locking_mode=EXCLUSIVE")
connection.execute("BEGIN EXCLUSIVE")
connection.execute("INSERT INTO effect_sql_migrations (migration_id, name) VALUES (9999, 'x')")
print("locked", flush=True)
time.sleep(600)
"""


def parent_of(pid: int) -> int | None:
    """`pid`'s parent pid (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
