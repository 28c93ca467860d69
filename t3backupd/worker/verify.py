"""Worker job "verify", run as the user: sha256 against `NAME.sha256`, then SQLite's check.

A snapshot is opened with O_NOFOLLOW: a symlink (or any non-regular file) named like a
snapshot is reported `unreadable`, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass

from t3backupd.core.checks import classify, parse_checksum_line, select_for_verify
from t3backupd.core.naming import CHECKSUM_SUFFIX
from t3backupd.core.protocol import Report, VerifyResult, VerifySpec
from t3backupd.worker import files as ops
from t3backupd.worker.job import Job

MAX_CHECKSUM_FILE_BYTES = 4096


@dataclass(frozen=True)
class Checked:
    """One snapshot's verification; `digest` is its actual sha256 (None if unreadable)."""

    result: VerifyResult
    digest: str | None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file verified
    size: int = 0


def open_snapshot(path: str) -> tuple[int, os.stat_result]:
    """Open a snapshot read-only without following a link; return (fd, fstat).

    Raises OSError (ELOOP for a symlink, EACCES...), or IsADirectoryError-like
    OSError(EINVAL) for anything but a regular file.
    """
    # O_NONBLOCK: a FIFO named like a snapshot must not hang the worker.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd, info


def _unreadable_detail(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "is a symbolic link; not followed"
    return f"cannot open: {error.strerror}"


def read_recorded_digest(dest_dir: str, name: str) -> str | None:
    """The digest in `dest_dir/NAME.sha256`, or None if absent, a link, or malformed."""
    path = os.path.join(dest_dir, name + CHECKSUM_SUFFIX)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, MAX_CHECKSUM_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_CHECKSUM_FILE_BYTES:
        return None
    return parse_checksum_line(raw.decode("ascii", "replace"), name)


def same_file(path: str, identity: tuple[int, int] | None) -> bool:
    """True if `path` (not followed) is the regular file with this (st_dev, st_ino)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == identity


def check_snapshot(dest_dir: str, name: str, mode: str) -> Checked | None:
    """Verify one snapshot: sha256 vs its checksum file, and quick_check ("quick") or
    integrity_check ("full"), run in parallel.

    Returns None if the file vanished meanwhile (pruned by a concurrent pass).
    """
    path = os.path.join(dest_dir, name)
    try:
        fd, info = open_snapshot(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return Checked(VerifyResult(name, "unreadable", _unreadable_detail(error)), None)
    identity = (info.st_dev, info.st_ino)
    digests: list[str] = []

    def hash_it() -> None:
        digests.append(ops.sha256_fd(fd))

    hasher = threading.Thread(target=hash_it, name="sha256")
    hasher.start()
    try:
        # SQLite opens by path: afterwards make sure the path still is the file we hold
        # (a swap can only come from the user, but a result must describe one file).
        problems = ops.integrity_problems(path, mode)
    finally:
        hasher.join()  # in the user's own worker: its deadline is main.py's (see files.py)
        os.close(fd)
    if not same_file(path, identity):
        if not os.path.lexists(path):
            return None
        return Checked(VerifyResult(name, "unreadable", "replaced while being verified"), None)
    if not digests:
        return Checked(VerifyResult(name, "unreadable", "read error while hashing"), None)
    # Read the checksum after hashing: a snapshot being published right now gets its
    # NAME.sha256 a moment after its name, well within the time hashing takes.
    recorded = read_recorded_digest(dest_dir, name)
    outcome, detail = classify(recorded, digests[0], problems)
    return Checked(VerifyResult(name, outcome, detail), digests[0], identity, info.st_size)


def verify_job(job: Job, spec: VerifySpec) -> Report:
    """Worker job "verify": check each snapshot of the user (or only the newest)."""
    mode = "quick" if spec.verify == "quick" else "full"
    results = []
    for parsed in select_for_verify(ops.scan(spec.dest_dir), spec.latest_only):
        checked = check_snapshot(spec.dest_dir, parsed.filename, mode)
        if checked is not None:
            results.append(checked.result)
    bad = sum(1 for result in results if result.outcome != "ok")
    return Report(
        action="verify",
        status="ok",
        message=f"{len(results)} snapshot(s) checked, {bad} bad",
        duration_s=round(job.elapsed(), 6),
        snapshots=tuple(ops.inventory(spec.dest_dir)),
        verified=tuple(results),
    )
