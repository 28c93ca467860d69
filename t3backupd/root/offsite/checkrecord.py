"""Root's record of offsite checks, written by every check (the daemon's cron and
`t3backupd offsite check` alike) and served by the daemon from its first scrape.

One small JSON file, `t3backupd-last-check`, in `offsite.cache_dir`: the one root-only
(0700) directory that both the CLI and the daemon know from the config (the daemon's
`$STATE_DIRECTORY` exists only under systemd). It holds the time of the last passed and
of the last failed check, the time and result of the last check, and the count of failed
checks. It is replaced atomically (temp file, fsync, rename) under an flock of the
directory, so a CLI check and the daemon's never lose each other's count. It is read like
hostile input: the directory and the file are opened without following a link, must be
ours and not group/other-writable, the file a regular one of at most `MAX_BYTES`, the
content exactly the schema; anything else is one warning and treated as absent. The
one-line file of earlier versions (the last passed check's epoch seconds) is still read.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from t3backupd.root.log import get_logger
from t3backupd.root.statefile import replace_file
from t3backupd.root.trusted import UntrustedFile, read_own_file_at, trusted_directory

FILE_NAME = "t3backupd-last-check"
VERSION = 2  # 2 added first_copy_seen; a version 1 record is read as never seen
MAX_BYTES = 4096
MAX_FUTURE_SECONDS = 24 * 3600  # a clock fault between runs, not a forged far future
MAX_FAILURES = 1 << 40
_LEGACY = re.compile(rb"[0-9]{1,12}(\.[0-9]{1,9})?\n?")
_KEYS_V1 = {"version", "last_check", "last_ok", "last_passed", "last_failed", "failures"}
_KEYS = _KEYS_V1 | {"first_copy_seen"}

Stamp = tuple[int, int, int]  # inode, mtime in ns, size: "has the file changed?"


@dataclass(frozen=True)
class CheckRecord:
    """What root knows of past checks (times in epoch seconds, 0 = never)."""

    last_passed: float = 0.0
    last_failed: float = 0.0
    failures: int = 0
    # When root first saw a copy in the repository (an upload, or copies listed at the
    # daemon's start): the check cron has had its chance a week after this, whatever
    # the age of the snapshot copied.
    first_copy_seen: float = 0.0

    @property
    def last_check(self) -> float:
        return max(self.last_passed, self.last_failed)

    @property
    def last_ok(self) -> bool:
        """The last check's result (False when there was none)."""
        return self.last_passed > 0 and self.last_passed >= self.last_failed

    def seen(self, when: float) -> CheckRecord:
        """This record knowing that the repository holds copies at `when`."""
        return self if self.first_copy_seen else replace(self, first_copy_seen=when)

    def after(self, ok: bool, when: float) -> CheckRecord:
        """This record with one more check, passed or failed, at `when`."""
        if ok:
            return replace(self, last_passed=when)
        return replace(self, last_failed=when, failures=min(self.failures + 1, MAX_FAILURES))


def _time(document: dict[str, object], key: str, now: float) -> float:
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} {value!r}: expected a time (epoch seconds)")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} {value!r}: expected a time (epoch seconds)")
    if value > now + MAX_FUTURE_SECONDS:
        raise ValueError(f"{key} {value!r}: in the future")
    return float(value)


def parse(data: bytes, now: float) -> CheckRecord:
    """The record in a file's bytes. Raises ValueError saying what is wrong."""
    if _LEGACY.fullmatch(data):
        return CheckRecord(last_passed=_time({"last_passed": float(data)}, "last_passed", now))
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or set(document) not in (_KEYS, _KEYS_V1):
        raise ValueError(f"expected keys {', '.join(sorted(_KEYS))}")
    if document["version"] != (VERSION if set(document) == _KEYS else 1):
        raise ValueError(f"version {document['version']!r}, expected {VERSION}")
    failures = document["failures"]
    if type(failures) is not int or not 0 <= failures <= MAX_FAILURES:
        raise ValueError(f"failures {failures!r}: expected an integer 0..{MAX_FAILURES}")
    record = CheckRecord(
        _time(document, "last_passed", now),
        _time(document, "last_failed", now),
        failures,
        _time(document, "first_copy_seen", now) if "first_copy_seen" in document else 0.0,
    )
    if (
        _time(document, "last_check", now) != record.last_check
        or document["last_ok"] is not record.last_ok
    ):
        raise ValueError("last_check/last_ok do not match last_passed/last_failed")
    return record


def render(record: CheckRecord) -> bytes:
    document = {
        "version": VERSION,
        "last_check": record.last_check,
        "last_ok": record.last_ok,
        "last_passed": record.last_passed,
        "last_failed": record.last_failed,
        "failures": record.failures,
        "first_copy_seen": record.first_copy_seen,
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _open_dir(directory: str) -> int:
    """A descriptor of `directory` (created 0700 if missing), trusted like the config: ours
    all the way up, no link followed (trusted.trusted_directory). Raises OSError or
    ValueError."""
    try:
        return trusted_directory(directory)
    except UntrustedFile as error:
        raise ValueError(str(error)) from None


def _read(dir_fd: int, path: str, now: float) -> CheckRecord | None:
    """The record in the open directory (None if there is none). Raises OSError/ValueError."""
    try:
        data = read_own_file_at(dir_fd, FILE_NAME, path, MAX_BYTES, private=False)
    except UntrustedFile as error:
        raise ValueError(str(error)) from None
    return None if data is None else parse(data, now)


def _warn(event: str, path: str, error: OSError | ValueError) -> None:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    get_logger().warning(event, path=path, error=text)


def stamp(directory: str) -> Stamp | None:
    """What tells a changed record file (None: there is none, or it cannot be seen)."""
    try:
        info = os.stat(os.path.join(directory, FILE_NAME), follow_symlinks=False)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def load(directory: str, now: float) -> CheckRecord | None:
    """The record in `directory`, or None if there is none or it is refused (one warning
    saying why). Never raises."""
    path = os.path.join(directory, FILE_NAME)
    if not os.path.lexists(directory):
        return None  # nothing recorded yet: not created by a mere read
    try:
        dir_fd = _open_dir(directory)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        _warn("offsite check record ignored", path, error)
        return None
    try:
        return _read(dir_fd, path, now)
    except (OSError, ValueError) as error:
        _warn("offsite check record ignored", path, error)
        return None
    finally:
        os.close(dir_fd)


def record(directory: str, ok: bool, when: float) -> CheckRecord:
    """Add one check (passed or failed, at `when`) to the record in `directory` (created
    0700 if missing) and return the new record. A refused old record counts as none (one
    warning). A failure to write is logged and the new record is still returned (the
    check itself happened); never raises."""
    return _update(directory, lambda old: old.after(ok, when), when)


def copies_seen(directory: str, when: float) -> CheckRecord:
    """Record that the repository holds copies (kept if already recorded: the first time
    counts) and return the record. Written only when it changes; never raises."""
    return _update(directory, lambda old: old.seen(when), when)


def _update(
    directory: str, change: Callable[[CheckRecord], CheckRecord], when: float
) -> CheckRecord:
    path = os.path.join(directory, FILE_NAME)
    try:
        dir_fd = _open_dir(directory)
    except (OSError, ValueError) as error:
        _warn("offsite check record not written", path, error)
        return change(CheckRecord())
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # one writer at a time: the CLI and the daemon
        try:
            old = _read(dir_fd, path, when)
        except (OSError, ValueError) as error:
            _warn("offsite check record ignored", path, error)
            old = None
        new = change(old or CheckRecord())
        if new == old:
            return new
        try:
            _replace(dir_fd, render(new))
        except OSError as error:
            _warn("offsite check record not written", path, error)
        return new
    finally:
        os.close(dir_fd)  # releases the flock


def _replace(dir_fd: int, data: bytes) -> None:
    """Put `data` in the record file atomically (temp file, fsync, rename, fsync of the
    directory); the directory is made 0700. Raises OSError."""
    os.fchmod(dir_fd, 0o700)
    replace_file(dir_fd, FILE_NAME, f".{FILE_NAME}.{os.getpid()}.tmp", data)
    os.fsync(dir_fd)
