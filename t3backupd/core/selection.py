"""Which snapshot a restore means, and the lines that describe it (pure).

`--snapshot NAME|latest|LABEL` is parsed here on the root side (usage errors before any
worker starts) and again inside the worker (which picks among the files it sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from t3backupd.core.errors import SnapshotNotFound, UsageError
from t3backupd.core.naming import SnapshotName, is_valid_label, parse_name
from t3backupd.core.wallclock import occurrences

LATEST = "latest"
PRE_RESTORE_LABEL = "pre-restore"
MAX_HOLDERS_NAMED = 5
MAX_COMMAND_CHARS = 80
# A snapshot without NAME.sha256 (the legacy script wrote none) is restorable when its
# integrity check passes; the restored copy is then checked against the digest we read.
RESTORABLE_OUTCOMES = ("ok", "missing_checksum")


@dataclass(frozen=True)
class SnapshotRequest:
    """What `--snapshot` asked for: kind "name" (exact file name), "latest" or "label"."""

    kind: str
    value: str

    def describe(self) -> str:
        if self.kind == "latest":
            return "the newest snapshot"
        if self.kind == "label":
            return f"the newest snapshot labelled {self.value!r}"
        return f"snapshot {self.value!r}"

    def not_found(self) -> str:
        """The one line saying nothing matched."""
        if self.kind == "latest":
            return "no snapshot at all"
        if self.kind == "label":
            return f"no snapshot labelled {self.value!r}"
        return f"no snapshot named {self.value!r}"


def parse_snapshot_request(text: str) -> SnapshotRequest:
    """Parse `--snapshot NAME|latest|LABEL`.

    Raises UsageError for anything that could name a path (a '/' or '..'), control
    characters, or text that is neither a snapshot file name nor a valid label.
    """
    if "/" in text or ".." in text:
        raise UsageError(f"invalid --snapshot {text!r}: a snapshot name never contains '/' or '..'")
    if parse_name(text) is not None:
        return SnapshotRequest("name", text)
    if text == LATEST:
        return SnapshotRequest("latest", text)
    if is_valid_label(text):
        return SnapshotRequest("label", text)
    raise UsageError(
        f"invalid --snapshot {text!r}: use a snapshot file name, 'latest' or a label "
        "(1-64 of A-Z a-z 0-9 . _ -)"
    )


def choose_snapshot(
    entries: Sequence[tuple[SnapshotName, bool]], request: SnapshotRequest
) -> SnapshotName:
    """The snapshot `request` names among `entries` ((parsed name, is a regular file)).

    "latest" and labels pick the newest regular file by the time in its name (what
    `list` shows); an exact name may be any entry, so that a planted link is reported by
    the verification rather than silently skipped. Raises SnapshotNotFound.
    """
    if request.kind == "name":
        for parsed, _ in entries:
            if parsed.filename == request.value:
                return parsed
        raise SnapshotNotFound(request.not_found())
    candidates = [
        parsed
        for parsed, regular in entries
        if regular and (request.kind == "latest" or parsed.label == request.value)
    ]
    if not candidates:
        raise SnapshotNotFound(request.not_found())
    return max(candidates, key=lambda parsed: (parsed.time, parsed.filename))


# `--at`: a wall time in the config's time zone; a date alone means 00:00 that day.
AT_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
AT_SHOWN = "%Y-%m-%d %H:%M:%S %Z"


def parse_at(text: str, zone: tzinfo, zone_name: str) -> datetime:
    """The instant (aware, UTC) `--at TEXT` names, read as a wall time in `zone`.

    A time in the hour that repeats when DST ends means its earlier occurrence; a time
    the clocks skipped when DST began does not exist. Raises UsageError (one line).
    """
    for layout in AT_FORMATS:
        try:
            wall = datetime.strptime(text, layout)  # naive wall time, zoned below
        except ValueError:
            continue
        break
    else:
        raise UsageError(
            f"invalid --at {text!r}: use 'YYYY-MM-DD HH:MM', 'YYYY-MM-DD HH:MM:SS' or "
            f"'YYYY-MM-DD' (a time in {zone_name})"
        )
    instants, in_gap = occurrences(wall, zone)
    if in_gap:
        raise UsageError(
            f"--at {text!r} does not exist in {zone_name}: the clocks skipped it when DST "
            "began; give a time before or after the change"
        )
    return instants[0]


def choose_at(copies: Sequence[tuple[float, str]], moment: datetime, zone: tzinfo) -> str:
    """The name of the newest of `copies` ((epoch seconds, name)) whose time is at or
    before `moment`. Raises SnapshotNotFound: no copy at all, or (one line naming the
    oldest copy and its time in `zone`) every copy is later than `moment`."""
    if not copies:
        raise SnapshotNotFound("no snapshot at all")
    limit = moment.timestamp()
    candidates = [copy for copy in copies if copy[0] <= limit]
    if not candidates:
        oldest_time, oldest = min(copies)
        shown = datetime.fromtimestamp(oldest_time, zone).strftime(AT_SHOWN)
        raise SnapshotNotFound(
            f"no snapshot at or before {moment.astimezone(zone).strftime(AT_SHOWN)}: "
            f"the oldest is {oldest} of {shown}"
        )
    return max(candidates)[1]


def shorten_command(command: str) -> str:
    """A command line of at most MAX_COMMAND_CHARS, cut with "..." so it shows it was cut."""
    if len(command) <= MAX_COMMAND_CHARS:
        return command
    return command[: MAX_COMMAND_CHARS - 3] + "..."


def describe_holders(holders: Sequence[tuple[int, str]]) -> str:
    """One line naming the processes that hold the database open."""
    named = ", ".join(
        f"pid {pid} ({shorten_command(command)})" for pid, command in holders[:MAX_HOLDERS_NAMED]
    )
    more = len(holders) - MAX_HOLDERS_NAMED
    if more > 0:
        named += f" and {more} more"
    return f"the database is open by {named}"


def undo_command(user: str, config_path: str | None = None) -> str:
    """The command that undoes an in-place restore."""
    config = f"-c {config_path} " if config_path else ""
    return f"t3backupd {config}restore --user {user} --snapshot {PRE_RESTORE_LABEL} --in-place"
