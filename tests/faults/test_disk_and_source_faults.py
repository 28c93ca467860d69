"""Faults outside the worker: a destination that runs out of space, a source that is
corrupt or not a database at all. Real users, real databases, the real CLI; the full
destination is a real tmpfs mount. Needs root (users, setuid, mount).

Each failure must be clean: the right reason, one clear line, exit 1, no traceback,
no temp file left, nothing new published, earlier snapshots untouched.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import need
from support.snapshots import (
    MakeUser,
    json_config,
    published_state,
    snapshot_events,
    temps_in,
)
from support.system import PYTHON, create_state_db, run_as, t3backupd

from t3backupd.core.usermap import User

PAGE = 4096
TMPFS_BYTES = 8 << 20

# As the user: checkpoint the (closed) source so the file holds every page, then print
# the page size and the root page of orchestration_events.
ROOT_PAGE = r"""
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
page_size = connection.execute("PRAGMA page_size").fetchone()[0]
root = connection.execute(
    "SELECT rootpage FROM sqlite_schema WHERE name = 'orchestration_events'"
).fetchone()[0]
connection.close()
print(page_size, root)
"""

# As the user: overwrite bytes [start, start + len(garbage)) of a file in place.
OVERWRITE = r"""
import sys
with open(sys.argv[1], "r+b") as handle:
    handle.seek(int(sys.argv[2]))
    handle.write(bytes.fromhex(sys.argv[3]))
"""


def need_tmpfs_mount() -> None:
    need(shutil.which("mount") is not None, "needs mount(8) to make a small tmpfs")


@pytest.fixture
def small_dest(sandbox: Path) -> Iterator[Path]:
    """`<sandbox>/dest` on its own 8 MiB tmpfs (root-owned 0755), unmounted afterwards."""
    need_tmpfs_mount()
    dest = sandbox / "dest"
    dest.mkdir(mode=0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(dest)],
        capture_output=True,
        text=True,
    )
    need(mounted.returncode == 0, f"needs to mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield dest
    finally:
        subprocess.run(["umount", str(dest)], check=True)


def config_for(directory: Path, user: User, dest: Path, extra: str = "") -> Path:
    return json_config(directory, [user], f"[retention]\nkeep = 14\n{extra}", dest)


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def source_bytes(database: Path) -> int:
    """What the worker's space guard counts: the database plus its WAL."""
    wal = Path(f"{database}-wal")
    return database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def take_first_snapshot(config: Path, user: User, user_dir: Path) -> dict[str, str]:
    result = t3backupd(config, "snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    state = published_state(user, user_dir)
    assert len(state) == 1
    return state


def assert_clean_failure(
    result: subprocess.CompletedProcess[str],
    user: User,
    user_dir: Path,
    before: dict[str, str],
    reasons: tuple[str, ...],
) -> tuple[str, str]:
    """Exit 1, one FAILED line, a matching log event, no traceback, no temp, the
    published set unchanged. Returns (reason, message)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    prefix = f"{user.name}: FAILED "
    [line] = result.stdout.splitlines()
    assert line.startswith(prefix), line
    reason, message = line.removeprefix(prefix).split(": ", 1)
    assert reason in reasons, line
    [event] = snapshot_events(result.stderr)
    assert (event["status"], event["reason"], event["message"]) == ("failed", reason, message)
    assert temps_in(user_dir) == []
    assert published_state(user, user_dir) == before
    return reason, message


# --- a full destination ------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize(
    ("spare_pages", "message"),
    [
        # Not even the copy's rollback journal fits: SQLITE_FULL.
        (0, "sqlite: database or disk is full"),
        # The pages fit, but not the 32 KiB WAL index SQLite maps while switching the
        # copy out of WAL mode: SQLITE_IOERR_SHMSIZE, which is ENOSPC too.
        (3, "sqlite: disk I/O error"),
    ],
    ids=["no-spare-page", "no-room-for-wal-index"],
)
def test_destination_filling_up_during_the_copy_fails_with_disk_space(
    sandbox: Path, small_dest: Path, make_user: MakeUser, spare_pages: int, message: str
) -> None:
    """The space guard passes (free space == the source's size, plus a few pages), but
    the copy needs a little more than its final size while it is written, so SQLite
    meets ENOSPC mid-copy."""
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=7)
    config = config_for(sandbox, user, small_dest)
    user_dir = small_dest / user.name
    before = take_first_snapshot(config, user, user_dir)

    filler = small_dest / "filler"
    filler.write_bytes(
        b"\0" * (free_bytes(small_dest) - source_bytes(database) - spare_pages * PAGE)
    )
    assert free_bytes(small_dest) == source_bytes(database) + spare_pages * PAGE

    result = t3backupd(config, "snapshot")
    _, text = assert_clean_failure(result, user, user_dir, before, ("disk_space",))
    # The worker's own message, then (issue 10) what is left and who fills the destination.
    assert text.split(" (")[0] == message, "the guard must have passed and the copy failed"
    assert f"largest directories: {user.name} " in text, text

    # Space back: the next pass succeeds.
    filler.unlink()
    after = t3backupd(config, "snapshot")
    assert after.returncode == 0, after.stdout + after.stderr
    assert len(published_state(user, user_dir)) == 2


@pytest.mark.root
def test_source_larger_than_the_free_space_is_refused_before_copying(
    sandbox: Path, small_dest: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=8)
    config = config_for(sandbox, user, small_dest, "[snapshot]\nmin_free_bytes = 0\n")
    user_dir = small_dest / user.name
    before = take_first_snapshot(config, user, user_dir)

    # The app's database grew past what the destination can hold.
    run_as(user, [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "create", str(database),
                  "--size-mb", "20", "--seed", "8", "--force"])  # fmt: skip
    assert source_bytes(database) > free_bytes(small_dest)

    result = t3backupd(config, "snapshot")
    _, message = assert_clean_failure(result, user, user_dir, before, ("disk_space",))
    assert "bytes free" in message and "min_free_bytes=0" in message, message


@pytest.mark.root
def test_min_free_bytes_refuses_a_copy_that_would_fit_but_leave_too_little(
    sandbox: Path, small_dest: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=9)
    config = config_for(sandbox, user, small_dest)
    user_dir = small_dest / user.name
    before = take_first_snapshot(config, user, user_dir)

    # Room for the copy, but not for the copy and the reserve as well.
    reserve = free_bytes(small_dest) - source_bytes(database) + PAGE
    config = config_for(sandbox, user, small_dest, f"[snapshot]\nmin_free_bytes = {reserve}\n")
    result = t3backupd(config, "snapshot")
    _, message = assert_clean_failure(result, user, user_dir, before, ("disk_space",))
    assert f"min_free_bytes={reserve}" in message, message

    # One page less reserve and the same copy goes through.
    config = config_for(
        sandbox, user, small_dest, f"[snapshot]\nmin_free_bytes = {reserve - PAGE}\n"
    )
    after = t3backupd(config, "snapshot")
    assert after.returncode == 0, after.stdout + after.stderr


# --- a bad source --------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize(
    ("method", "reason", "symptom"),
    [
        # The backup API copies pages verbatim: the damage reaches the copy, whose
        # quick_check finds it.
        ("backup", "verify_failed", "On tree page {root} cell"),
        # VACUUM INTO reads rows through the b-tree: SQLite itself stops the copy.
        ("vacuum", "sqlite_error", "sqlite: database disk image is malformed"),
    ],
)
def test_corrupt_source_page_is_never_published(
    sandbox: Path, make_user: MakeUser, method: str, reason: str, symptom: str
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=10)
    dest = sandbox / "dest"
    config = config_for(sandbox, user, dest, f'[snapshot]\nmethod = "{method}"\n')
    user_dir = dest / user.name
    before = take_first_snapshot(config, user, user_dir)

    # Bit rot in an interior b-tree page (child pointers and keys, no user payload),
    # written while nothing has the database open.
    found = run_as(user, [PYTHON, "-I", "-c", ROOT_PAGE, str(database)]).stdout.split()
    page_size, root = int(found[0]), int(found[1])
    offset = (root - 1) * page_size
    with database.open("rb") as handle:
        handle.seek(offset)
        assert handle.read(1) == b"\x05", "not an interior table b-tree page"
    garbage = random.Random(10).randbytes(page_size - 12)
    run_as(user, [PYTHON, "-I", "-c", OVERWRITE, str(database), str(offset + 12), garbage.hex()])

    result = t3backupd(config, "snapshot")
    got, text = assert_clean_failure(
        result, user, user_dir, before, ("verify_failed", "sqlite_error")
    )
    assert got == reason, result.stdout
    assert symptom.format(root=root) in text, text


@pytest.mark.root
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "sqlite: file is not a database"),
        ("empty", "source is an empty (0-byte) file"),
        ("directory", "source is a directory, not a database"),
    ],
)
def test_source_replaced_by_something_else_fails_with_a_clear_message(
    sandbox: Path, make_user: MakeUser, kind: str, message: str
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=11)
    dest = sandbox / "dest"
    config = config_for(sandbox, user, dest)
    user_dir = dest / user.name
    before = take_first_snapshot(config, user, user_dir)

    replace = {
        "text": 'yes "not a database" | head -n 100 > "$1"',
        "empty": ': > "$1"',
        "directory": 'mkdir "$1"',
    }[kind]
    script = f'rm -f "$1" "$1-wal" "$1-shm" && {replace}'
    run_as(user, ["sh", "-c", script, "sh", str(database)])

    result = t3backupd(config, "snapshot")
    _, text = assert_clean_failure(result, user, user_dir, before, ("sqlite_error",))
    assert text == message
