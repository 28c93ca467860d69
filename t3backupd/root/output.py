"""The CLI's human output, shared by every command (the offsite ones included): where
results and problems go, and how sizes and ages read, so `list` and `list --offsite`
say the same thing the same way."""

from __future__ import annotations

from datetime import UTC, datetime

from t3backupd.core.selection import LIST_TIME_FORMAT


class Output:
    """Human output: results on stdout (not with -q), problems always (stdout)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def result(self, line: str) -> None:
        if not self.quiet:
            print(line)

    def problem(self, line: str) -> None:
        print(line)


def listed_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(LIST_TIME_FORMAT)


def age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def age_column(epoch: float, now: float, in_future: bool) -> str:
    """The age column of a listing: no negative age for a future-dated copy (a clock
    fault, or a planted name)."""
    return "in the future" if in_future else f"{age(max(0.0, now - epoch)):>6} ago"


def schema_column(version: int | None) -> str:
    """The app's schema version as `list` and `list --offsite` show it ("" if unknown)."""
    return "" if version is None else f"  schema {version}"
