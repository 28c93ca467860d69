"""Verification outcomes (pure): checksum lines, classification, what to verify."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from t3backupd.core.naming import SnapshotName
from t3backupd.core.protocol import Outcome, Report

MAX_DETAIL_CHARS = 200
HEX_DIGITS = frozenset("0123456789abcdef")


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


def classify(recorded: str | None, actual: str, problems: Sequence[str]) -> tuple[Outcome, str]:
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
    """Bad snapshots in a verify report; a verify run that failed as a whole counts one.
    No backup directory (`skipped`) has no bad snapshot: the staleness alert covers it."""
    if report.status == "skipped":
        return 0
    if not report.ok:
        return 1
    return sum(1 for result in report.verified if result.outcome != "ok")


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
