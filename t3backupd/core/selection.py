"""Which snapshot a restore means, and the lines that describe it (pure).

`--snapshot NAME|latest|LABEL` is parsed here on the root side (usage errors before any
worker starts) and again inside the worker (which picks among the files it sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from t3backupd.core.errors import SnapshotNotFound, UsageError
from t3backupd.core.naming import SnapshotName, is_valid_label, parse_name
from t3backupd.core.retention import is_future_dated
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


@dataclass(frozen=True)
class Choice:
    """A snapshot chosen, and the future-dated one skipped for it (the one that would have
    been "the newest" by its name), if any."""

    snapshot: SnapshotName
    skipped: SnapshotName | None = None


def _shown(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def skipped_line(name: str, when: datetime) -> str:
    """The one line saying a future-dated snapshot was passed over."""
    return (
        f"skipped {name}: dated in the future ({_shown(when)}; a clock fault, or a planted "
        "name); took the newest snapshot not in the future"
    )


def pick_snapshot(
    entries: Sequence[tuple[SnapshotName, bool]], request: SnapshotRequest, now: datetime
) -> Choice:
    """The snapshot `request` names among `entries` ((parsed name, is a regular file)).

    "latest" and labels pick the newest regular file by the time in its name (what
    `list` shows) that is not future-dated at `now` (retention's slack); the newest one
    passed over is `skipped`. An exact name may be any entry, future-dated too, so that a
    planted link is reported by the verification rather than silently skipped. Raises
    SnapshotNotFound (also when every candidate is future-dated: it names the newest).
    """
    if request.kind == "name":
        for parsed, _ in entries:
            if parsed.filename == request.value:
                return Choice(parsed)
        raise SnapshotNotFound(request.not_found())
    candidates = [
        parsed
        for parsed, regular in entries
        if regular and (request.kind == "latest" or parsed.label == request.value)
    ]

    def newest(items: Sequence[SnapshotName]) -> SnapshotName | None:
        return max(items, key=lambda parsed: (parsed.time, parsed.filename), default=None)

    future = newest([parsed for parsed in candidates if is_future_dated(parsed.time, now)])
    chosen = newest([parsed for parsed in candidates if not is_future_dated(parsed.time, now)])
    if chosen is None:
        if future is not None:
            wanted = "no snapshot" if request.kind == "latest" else request.not_found()
            raise SnapshotNotFound(
                f"{wanted} that is not dated in the future: the newest, "
                f"{future.filename}, is dated {_shown(future.time)} (a clock fault, or a "
                "planted name); name it with --snapshot to restore it anyway"
            )
        raise SnapshotNotFound(request.not_found())
    return Choice(chosen, future)


def choose_snapshot(
    entries: Sequence[tuple[SnapshotName, bool]],
    request: SnapshotRequest,
    now: datetime | None = None,
) -> SnapshotName:
    """`pick_snapshot`'s snapshot (`now` defaults to the current time). Raises
    SnapshotNotFound."""
    return pick_snapshot(entries, request, now or datetime.now(UTC)).snapshot


# `--at`: a wall time in the config's time zone; a date alone means 00:00 that day.
AT_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
AT_SHOWN = "%Y-%m-%d %H:%M:%S %Z"
# The time column of `list` (UTC, a trailing Z): `--at` takes it as printed, in UTC.
LIST_TIME_FORMAT = "%Y-%m-%d %H:%M:%SZ"


def parse_at(text: str, zone: tzinfo, zone_name: str) -> datetime:
    """The instant (aware, UTC) `--at TEXT` names, read as a wall time in `zone`.

    A time in the hour that repeats when DST ends means its earlier occurrence; a time
    the clocks skipped when DST began does not exist. A time as `list` prints it
    (LIST_TIME_FORMAT, a trailing Z) is UTC, whatever `zone`. Raises UsageError (one line).
    """
    try:
        return datetime.strptime(text, LIST_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        pass
    for layout in AT_FORMATS:
        try:
            wall = datetime.strptime(text, layout)  # naive wall time, zoned below
        except ValueError:
            continue
        break
    else:
        raise UsageError(
            f"invalid --at {text!r}: use 'YYYY-MM-DD HH:MM', 'YYYY-MM-DD HH:MM:SS' or "
            f"'YYYY-MM-DD' (a time in {zone_name}), or 'YYYY-MM-DD HH:MM:SSZ' (UTC, as list "
            "prints it)"
        )
    instants, in_gap = occurrences(wall, zone)
    if in_gap:
        raise UsageError(
            f"--at {text!r} does not exist in {zone_name}: the clocks skipped it when DST "
            "began; give a time before or after the change"
        )
    return instants[0]


def pick_at(
    copies: Sequence[tuple[float, str]], moment: datetime, zone: tzinfo, now: datetime
) -> tuple[str, str | None]:
    """The name of the newest of `copies` ((epoch seconds, name)) whose time is at or
    before `moment` and not future-dated at `now`, and the newest future-dated one at or
    before `moment` that was passed over (or None). Raises SnapshotNotFound: no copy at
    all, every copy is later than `moment` (one line naming the oldest copy and its time
    in `zone`), or every one at or before it is future-dated."""
    if not copies:
        raise SnapshotNotFound("no snapshot at all")
    limit = moment.timestamp()
    at_or_before = [copy for copy in copies if copy[0] <= limit]
    future: list[tuple[float, str]] = []
    candidates: list[tuple[float, str]] = []
    for copy in at_or_before:
        (future if is_future_dated(_instant(copy[0]), now) else candidates).append(copy)
    asked = moment.astimezone(zone).strftime(AT_SHOWN)
    if not candidates:
        if future:
            newest_time, newest = max(future)
            raise SnapshotNotFound(
                f"no snapshot at or before {asked} that is not dated in the future: "
                f"{newest} is dated {_shown(_instant(newest_time))} (a clock fault, or a "
                "planted name); name it with --snapshot to restore it anyway"
            )
        oldest_time, oldest = min(copies)
        shown = datetime.fromtimestamp(oldest_time, zone).strftime(AT_SHOWN)
        raise SnapshotNotFound(
            f"no snapshot at or before {asked}: the oldest is {oldest} of {shown}"
        )
    return max(candidates)[1], max(future)[1] if future else None


def pick_before_schema(
    copies: Sequence[tuple[float, str, int | None]], version: int, now: datetime
) -> str:
    """`--before-schema N`: the name of the newest of `copies` ((epoch seconds, name,
    schema version)) whose schema version is known and below `version`, not future-dated
    at `now`. Raises SnapshotNotFound (one line)."""
    candidates = [
        (when, name)
        for when, name, schema in copies
        if schema is not None and schema < version and not is_future_dated(_instant(when), now)
    ]
    if not candidates:
        known = sorted({schema for _, _, schema in copies if schema is not None})
        seen = f"versions seen: {', '.join(map(str, known))}" if known else "none has a known one"
        raise SnapshotNotFound(f"no snapshot with a schema version below {version} ({seen})")
    return max(candidates)[1]


def _instant(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def choose_at(
    copies: Sequence[tuple[float, str]],
    moment: datetime,
    zone: tzinfo,
    now: datetime | None = None,
) -> str:
    """`pick_at`'s name (`now` defaults to the current time). Raises SnapshotNotFound."""
    return pick_at(copies, moment, zone, now or datetime.now(UTC))[0]


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
