"""Snapshot file names: format and parse (pure).

- current: ``state-YYYYmmddTHHMMSSZ.sqlite`` and ``state-YYYYmmddTHHMMSSZ--LABEL.sqlite`` (UTC)
- legacy (the shell script's): ``state-YYYYmmdd-HHMMSS.sqlite`` in the host's local time
- in progress: ``.t3backupd-*.tmp`` (hidden; removed by the next worker for that user)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

LABEL_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CURRENT = re.compile(r"state-(\d{8}T\d{6}Z)(?:--([A-Za-z0-9._-]{1,64}))?\.sqlite")
_LEGACY = re.compile(r"state-(\d{8}-\d{6})\.sqlite")
CHECKSUM_SUFFIX = ".sha256"
TEMP_PREFIX = ".t3backupd-"
TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
# The label of a schema guard: the last snapshot of an old schema version, kept when the
# app's schema moves forward (worker/snapshot.py).
GUARD_PREFIX = "schema-"
_GUARD = re.compile(r"schema-(\d{1,9})")


@dataclass(frozen=True)
class SnapshotName:
    """A parsed snapshot file name. `time` is timezone-aware (UTC)."""

    filename: str
    time: datetime
    label: str | None
    legacy: bool = False

    @property
    def checksum_filename(self) -> str:
        return self.filename + CHECKSUM_SUFFIX


def is_valid_label(label: str) -> bool:
    """True if `label` may be used in a snapshot name.

    Beyond `[A-Za-z0-9._-]{1,64}`: no `..` anywhere and not `.`, so a label can
    always be named on the command line (`restore --snapshot LABEL` refuses `..`).
    """
    return LABEL_PATTERN.fullmatch(label) is not None and label != "." and ".." not in label


def guard_label(version: int) -> str:
    """The label of the guard kept for schema version `version`."""
    return f"{GUARD_PREFIX}{version}"


def guard_version(label: str | None) -> int | None:
    """The schema version a guard label names (None: not a guard's label)."""
    match = _GUARD.fullmatch(label) if label is not None else None
    return int(match.group(1)) if match is not None else None


def format_name(when: datetime, label: str | None = None) -> str:
    """File name for a snapshot taken at `when` (aware; converted to UTC).

    Raises ValueError if `when` is naive or `label` is not valid.
    """
    if when.tzinfo is None:
        raise ValueError("snapshot time must be timezone-aware")
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    if label is None:
        return f"state-{stamp}.sqlite"
    if not is_valid_label(label):
        raise ValueError(f"invalid label {label!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return f"state-{stamp}--{label}.sqlite"


def parse_name(filename: str, local_tz: tzinfo | None = None) -> SnapshotName | None:
    """Parse a snapshot file name; None if it is not one (such files are never touched).

    `local_tz` is the zone legacy names were written in (default: this host's local zone).
    """
    match = _CURRENT.fullmatch(filename)
    if match is not None:
        try:
            when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return SnapshotName(filename, when, match.group(2))
    match = _LEGACY.fullmatch(filename)
    if match is not None:
        try:
            naive = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            return None
        local = naive.replace(tzinfo=local_tz) if local_tz is not None else naive.astimezone()
        return SnapshotName(filename, local.astimezone(UTC), None, legacy=True)
    return None


# SQLite's own files beside a temp database (a copy in progress has a journal or WAL).
SQLITE_SIDECARS = ("", "-journal", "-wal", "-shm")


def is_temp_name(filename: str) -> bool:
    """True for an in-progress file a worker made (`.t3backupd-*.tmp`, or SQLite's
    journal/WAL/shm beside one): what the next worker for that user removes."""
    return filename.startswith(TEMP_PREFIX) and any(
        filename.endswith(TEMP_SUFFIX + sidecar) for sidecar in SQLITE_SIDECARS
    )
