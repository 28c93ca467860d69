"""Verify stored snapshots: sha256 against `NAME.sha256`, then SQLite's own check.

- pure: `parse_checksum_line`, `classify`, `verify_failures`;
- user side (inside the worker, as the user): `check_snapshot`, `verify_job`;
- parent side (root): `verify_user`, `run_verify_pass` (the CLI's `verify` and the
  daemon's scheduled verification both use these, so there is one way to verify).

A snapshot is opened with O_NOFOLLOW: a symlink (or any non-regular file) named like a
snapshot is reported `unreadable`, never followed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from t3backupd import snapshot as ops
from t3backupd.backup_pass import run_user_job
from t3backupd.config import Config
from t3backupd.log import get_logger
from t3backupd.naming import CHECKSUM_SUFFIX, SnapshotName
from t3backupd.protocol import JobSpec, Report, VerifyResult, failed
from t3backupd.spawn import ProcessTracker
from t3backupd.usermap import User

if TYPE_CHECKING:
    from t3backupd.worker import Job

# Verifying reads every snapshot of a user; give it a few snapshot-lengths of time.
VERIFY_TIMEOUT_FACTOR = 4
MAX_CHECKSUM_FILE_BYTES = 4096
MAX_DETAIL_CHARS = 200
HEX_DIGITS = frozenset("0123456789abcdef")


# --- pure -----------------------------------------------------------------------------


def parse_checksum_line(text: str, name: str) -> str | None:
    """The digest recorded for `name` in `sha256sum` format ("HEX  NAME" or "HEX *NAME").

    Returns the lower-case hex digest, or None if `text` is not exactly one such line.
    """
    lines = text.splitlines()
    if len(lines) != 1:
        return None
    parts = lines[0].split()
    if len(parts) != 2 or parts[1].lstrip("*") != name:
        return None
    digest = parts[0].lower()
    if len(digest) != 64 or not set(digest) <= HEX_DIGITS:
        return None
    return digest


def classify(recorded: str | None, actual: str, problems: Sequence[str]) -> tuple[str, str]:
    """Outcome and detail of one readable snapshot.

    `recorded` is the digest in `NAME.sha256` (None if missing or invalid), `actual` the
    file's sha256, `problems` what the integrity check found. A checksum mismatch wins
    over integrity errors (the bytes are not the ones published), which win over a
    missing checksum.
    """
    integrity = "; ".join(problems[:3])
    if recorded is not None and recorded != actual:
        detail = f"sha256 {actual[:12]}... differs from recorded {recorded[:12]}..."
        if problems:
            detail += f"; integrity: {integrity}"
        return "checksum_mismatch", detail[:MAX_DETAIL_CHARS]
    if problems:
        return "integrity_error", integrity[:MAX_DETAIL_CHARS]
    if recorded is None:
        return "missing_checksum", "no valid NAME.sha256 to compare with; integrity check ok"
    return "ok", ""


def verify_failures(report: Report) -> int:
    """Bad snapshots in a verify report; a verify run that failed as a whole counts one."""
    if not report.ok:
        return 1
    return sum(1 for result in report.verified if result.outcome != "ok")


# --- user side ------------------------------------------------------------------------


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
        with os.fdopen(fd, "rb", closefd=False) as handle:
            digests.append(hashlib.file_digest(handle, "sha256").hexdigest())

    hasher = threading.Thread(target=hash_it, name="sha256")
    hasher.start()
    try:
        # SQLite opens by path: afterwards make sure the path still is the file we hold
        # (a swap can only come from the user, but a result must describe one file).
        problems = ops.integrity_problems(path, mode)
    finally:
        hasher.join()
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


def select_for_verify(
    entries: Sequence[tuple[SnapshotName, os.stat_result]], latest_only: bool
) -> list[SnapshotName]:
    """Snapshot-named entries to verify, oldest first: every one (a non-regular file named
    like a snapshot is reported, not skipped), or with `latest_only` the newest regular
    file (the one `list` shows first and `restore --snapshot latest` picks)."""
    if not latest_only:
        return [parsed for parsed, _ in entries]
    regular = [parsed for parsed, info in entries if stat.S_ISREG(info.st_mode)]
    return regular[-1:]


def verify_job(job: Job) -> Report:
    """Worker job "verify": check each snapshot of the user (or only the newest)."""
    spec = job.spec
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


# --- parent side ----------------------------------------------------------------------


def verify_spec(
    config: Config, user: User, dest_dir: str, latest_only: bool, quick: bool
) -> JobSpec:
    """The job spec of verifying one user's snapshots under `config`."""
    return JobSpec(
        action="verify",
        user=user.name,
        dest_dir=dest_dir,
        verify="quick" if quick else "full",
        latest_only=latest_only,
        timeout_seconds=float(config.snapshot.timeout_seconds * VERIFY_TIMEOUT_FACTOR),
    )


def verify_user(
    config: Config,
    user: User,
    latest_only: bool = False,
    quick: bool = False,
    tracker: ProcessTracker | None = None,
) -> Report:
    """Verify one user's snapshots with a worker running as the user; log one event.

    Never raises for the user's files: a problem is in the report (`verified` outcomes,
    or a failed report if the worker itself failed).
    """
    log = get_logger()
    clock = time.monotonic()
    with structlog.contextvars.bound_contextvars(user=user.name):
        if tracker is not None and tracker.stopping.is_set():
            report = failed("verify", "timeout", "not started: daemon is stopping")
        else:
            report = run_user_job(
                config,
                user,
                lambda dest_dir: verify_spec(config, user, dest_dir, latest_only, quick),
                tracker,
            )
        fields = {
            "user": user.name,  # explicit too: capture_logs() in tests drops contextvars
            "status": report.status,
            "reason": report.reason,
            "checked": len(report.verified),
            "failures": verify_failures(report),
            "duration_s": round(time.monotonic() - clock, 3),
        }
        if not report.ok:
            log.error("verify", message=report.message, **fields)
        else:
            bad = {r.name: r.outcome for r in report.verified if r.outcome != "ok"}
            (log.warning if bad else log.info)("verify", bad=bad, **fields)
    return report


@dataclass(frozen=True)
class VerifyUserResult:
    user: User
    report: Report
    failures: int
    finished: float  # wall-clock epoch seconds


def run_verify_pass(
    config: Config,
    users: Sequence[User],
    latest_only: bool = False,
    quick: bool = False,
    tracker: ProcessTracker | None = None,
    on_result: Callable[[VerifyUserResult], None] | None = None,
) -> list[VerifyUserResult]:
    """Verify every user's snapshots, `config.snapshot.concurrency` users at a time.

    The daemon's scheduled verification calls this with the defaults (every snapshot,
    full integrity_check) and records each result in `on_result`.
    """

    def one(user: User) -> VerifyUserResult:
        report = verify_user(config, user, latest_only, quick, tracker)
        result = VerifyUserResult(user, report, verify_failures(report), time.time())
        if on_result is not None:
            on_result(result)
        return result

    with ThreadPoolExecutor(
        max_workers=config.snapshot.concurrency, thread_name_prefix="verify"
    ) as pool:
        return list(pool.map(one, users))
