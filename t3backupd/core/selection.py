"""Which snapshot a restore means, and the lines that describe it (pure).

`--snapshot NAME|latest|LABEL` is parsed here on the root side (usage errors before any
worker starts) and again inside the worker (which picks among the files it sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from t3backupd.core.errors import SnapshotNotFound, UsageError
from t3backupd.core.naming import SnapshotName, is_valid_label, parse_name

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
