"""The offsite engine interface: what the offsite lane needs from restic (or borg).

An engine stores one opaque byte stream per t3backupd snapshot, with metadata it can
give back (user, snapshot name, label, size, sha256), and nothing else: which snapshots
to upload, which to forget (the retention decision) and whether a stream is intact
(size and sha256) are decided here, on the root side, the same for every engine.

Every engine failure is an `OffsiteError` with one `reason` from `REASONS` and a
one-line message naming the repository (never a dump of the tool's output, never a
secret).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from t3backupd.core.naming import is_valid_label, parse_name
from t3backupd.core.offsite_config import OffsiteConfig

# Why an offsite operation failed (the `reason` label of
# t3backup_offsite_failures_total).
REASONS = (
    "unreachable",  # the back-end cannot be reached (network, server down, no such path)
    "auth",  # wrong repository password or back-end credentials refused
    "locked",  # another process holds the repository lock
    "no_space",  # the back-end is full
    "read_only",  # a local-path repository on a file system read-only here (the unit's sandbox)
    "timeout",  # no result within offsite.timeout_seconds
    "no_repository",  # no repository at that location (run `offsite init`)
    "corrupt",  # the stream's size or sha256 differs from the recorded ones
    "worker",  # the user's worker failed to stream (or misbehaved)
    "untrusted",  # a copy whose seal does not verify (see offsite/seal.py): never restored
    "quota",  # the user's bound (offsite.max_copies_per_user / max_bytes_per_user) is reached
    "failed",  # anything else the engine reported
)
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# Every engine process runs behind this prefix: it yields CPU and disk to the live app,
# as the snapshot worker does (nice +10, lowest best-effort I/O priority). A wrapper and
# not a post-spawn setpriority: Go and Python start threads at once, and a thread's
# nice value is its own. `ionice -t` runs the engine even where I/O priorities cannot be
# set; `nice` does so by itself. Both are in Debian's Essential set (coreutils,
# util-linux).
LOW_PRIORITY = ("nice", "-n", "10", "ionice", "-t", "-c", "2", "-n", "7")
MAX_SNAPSHOT_BYTES = 1 << 50


class OffsiteError(Exception):
    """One offsite failure: `reason` (one of REASONS) and a one-line message."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown offsite failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class SnapshotMeta:
    """What is recorded with each offsite copy (and read back to list and restore it)."""

    user: str
    name: str  # the t3backupd snapshot file name, e.g. state-20261201T033000Z.sqlite
    time: float  # the snapshot's time (epoch seconds, from its name)
    size: int
    sha256: str  # the digest recorded at publish time
    label: str | None = None
    # SQLite's page size, read from the stream's header before the upload starts (0 when
    # unknown: a copy listed back from the repository). Engines that chunk at page
    # boundaries (borg) need it before the first byte.
    page_size: int = 0
    # The app's schema version in the snapshot (None: unknown), and root's seal over
    # this record (offsite/seal.py; "" on a copy uploaded before seals).
    schema_version: int | None = None
    seal: str = ""

    def valid(self) -> bool:
        parsed = parse_name(self.name)
        return (
            parsed is not None
            and parsed.label == self.label
            and SHA256_PATTERN.fullmatch(self.sha256) is not None
            and 0 <= self.size <= MAX_SNAPSHOT_BYTES
            and (self.label is None or is_valid_label(self.label))
            and (self.seal == "" or SHA256_PATTERN.fullmatch(self.seal) is not None)
            and (self.schema_version is None or 0 <= self.schema_version < 1 << 31)
        )

    def words(self) -> list[str]:
        """The optional fields as KEY=VALUE words (a restic tag, a borg comment word)."""
        extra = [] if self.schema_version is None else [f"schema={self.schema_version}"]
        return extra + ([f"seal={self.seal}"] if self.seal else [])


def optional_fields(values: Mapping[str, str]) -> tuple[int | None, str] | None:
    """(schema_version, seal) from a copy's KEY=VALUE words (None: malformed)."""
    schema = values.get("schema")
    if schema is not None and not (schema.isdigit() and len(schema) <= 10):
        return None
    return (None if schema is None else int(schema)), values.get("seal", "")


def recorded_meta(
    user: str, name: str, values: Mapping[str, str], label: str | None
) -> SnapshotMeta | None:
    """A copy's record read back from the repository: its user and snapshot name, and
    the KEY=VALUE words it was stored with (restic tags, a borg comment): sha256, size,
    page_size and the optional ones. None when malformed or not valid."""
    parsed = parse_name(name)
    optional = optional_fields(values)
    try:
        size = int(values.get("size", "-1"))
        page_size = int(values.get("page_size", "0"))
    except ValueError:
        return None
    if parsed is None or not user or optional is None:
        return None
    meta = SnapshotMeta(
        user=user,
        name=name,
        time=parsed.time.timestamp(),
        size=size,
        sha256=values.get("sha256", ""),
        label=label,
        page_size=page_size,
        schema_version=optional[0],
        seal=optional[1],
    )
    return meta if meta.valid() else None


# How far a copy's record is to be believed (offsite/seal.py): "unchecked" until judged.
Trust = Literal["unchecked", "sealed", "legacy", "forged"]


SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER_BYTES = 100


def sqlite_page_size(head: bytes) -> int | None:
    """The page size in a SQLite database header (its first 100 bytes), or None when
    `head` is not one: the magic string, then bytes 16-17 big-endian, 1 meaning 65536,
    else a power of two 512..32768."""
    if len(head) < SQLITE_HEADER_BYTES or not head.startswith(SQLITE_MAGIC):
        return None
    raw = int.from_bytes(head[16:18], "big")
    size = 65536 if raw == 1 else raw
    if size < 512 or size > 65536 or size & (size - 1):
        return None
    return size


@dataclass(frozen=True)
class OffsiteSnapshot:
    """One copy in the repository: the engine's own id plus the recorded metadata."""

    id: str
    meta: SnapshotMeta
    host: str
    # What `list --offsite` shows when the id is no short handle: a borg copy's id is its
    # archive name, whose first characters are the same for every copy ("t3backupd+").
    short_id: str = ""
    trust: Trust = "unchecked"

    @property
    def listed_id(self) -> str:
        return (self.short_id or self.id)[:8]


@dataclass(frozen=True)
class UploadResult:
    id: str
    bytes_added: int  # what the repository grew by (after deduplication and compression)


class Upload(Protocol):
    """A running upload: write the stream to `fd`, then `commit` or `abort`."""

    fd: int  # write end; the caller writes exactly the snapshot's bytes

    def commit(self, timeout: float) -> UploadResult:
        """Close the stream and wait for the engine to record the copy. Raises OffsiteError."""
        ...

    def stopped_reading(self) -> OffsiteError:
        """The engine's own failure once it stopped reading before the end (the pipe
        broke): it is waited for (briefly), then stopped."""
        ...

    def abort(self) -> None:
        """Stop without recording anything (the engine is told to stop, then killed)."""
        ...


class Download(Protocol):
    """A running download: read the stream from `fd`, then `finish` or `abort`."""

    fd: int  # read end

    def finish(self, timeout: float) -> None:
        """Wait for the engine to exit cleanly. Raises OffsiteError."""
        ...

    def abort(self) -> None: ...


class Engine(Protocol):
    """One offsite repository. Methods raise OffsiteError; none waits without a deadline."""

    name: str  # "restic", "borg"
    location: str  # the repository, as shown in messages (no secrets)
    host: str  # whose copies these are (offsite.host, else this machine's name)
    config: OffsiteConfig

    def init(self) -> bool:
        """Create the repository; False if it exists already."""
        ...

    def snapshots(self, user: str | None = None) -> list[OffsiteSnapshot]:
        """This host's copies (of one user, or all), oldest first."""
        ...

    def start_upload(self, meta: SnapshotMeta) -> Upload: ...

    def start_download(self, snapshot: OffsiteSnapshot) -> Download: ...

    def forget(self, ids: Sequence[str]) -> None:
        """Remove these copies from the listing (their data goes at the next prune)."""
        ...

    def prune(self) -> None: ...

    def check(self, read_data_subset: str) -> None:
        """The engine's own consistency check, reading that share of the data."""
        ...

    def unlock_stale(self) -> None:
        """Remove locks left by engine processes that died (never a live one's)."""
        ...
