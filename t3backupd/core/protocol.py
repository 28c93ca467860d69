"""The parent <-> worker protocol: a job spec in (stdin), one JSON report out (stdout).

The worker runs as the user, who can tamper with it, so the parent treats its report
as hostile input: `parse_report` enforces a size cap, the schema, types, ranges and
name patterns, and rejects anything else (the caller then counts `worker_crashed`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

from t3backupd.core.naming import is_valid_label, parse_name
from t3backupd.core.usermap import User

PROTOCOL_VERSION = 1
MAX_REPORT_BYTES = 1 << 20
MAX_SNAPSHOTS_IN_REPORT = 10_000
MAX_MESSAGE_CHARS = 500
MAX_INT = 1 << 62

# --- the vocabulary -------------------------------------------------------------------

Action = Literal["snapshot", "inventory", "verify", "restore", "adopt", "stream"]
# "stopped" is the root side's own: a job ended because the daemon is stopping (not a
# failure, never counted). A worker cannot report it (see STATUSES).
Status = Literal["ok", "failed", "skipped", "stopped"]
STOPPED: Status = "stopped"
# Failures counted in the metrics (`t3backup_failures_total{reason}`).
FailureReason = Literal[
    "timeout", "sqlite_error", "verify_failed", "permission", "disk_space", "worker_crashed",
    "busy", "worker_stuck",
]  # fmt: skip
# no_source: the user has no database (snapshot); no_directory: `<dest>` or
# `<dest>/<user>` does not exist (read-only jobs, decided by the root side: nothing runs).
SkipReason = Literal["no_source", "no_directory"]
# Restore-only failures (never snapshot metrics labels): no such snapshot, --to target
# exists, database held open by a process of the user.
RestoreFailureReason = Literal["not_found", "exists", "in_use"]
Reason = FailureReason | SkipReason | RestoreFailureReason
Outcome = Literal["ok", "checksum_mismatch", "integrity_error", "missing_checksum", "unreadable"]
Method = Literal["backup", "vacuum"]
VerifyMode = Literal["quick", "full", "none"]
# Test-only kill points of a snapshot job (see SnapshotSpec.fault).
FaultPoint = Literal["after_copy", "during_verify", "after_publish"]
# Where a snapshot's schema version comes from ([snapshot] schema_version): "auto" is
# T3's migration table when the database has one, else SQLite's PRAGMA user_version.
SchemaSource = Literal["auto", "migrations", "user_version"]

# What a worker may report.
STATUSES: tuple[Status, ...] = tuple(status for status in get_args(Status) if status != STOPPED)
FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)
PARENT_ONLY_REASONS: tuple[FailureReason, ...] = ("worker_stuck",)
SKIP_REASONS: tuple[SkipReason, ...] = get_args(SkipReason)
RESTORE_FAILURE_REASONS: tuple[RestoreFailureReason, ...] = get_args(RestoreFailureReason)
VERIFY_OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
METHODS: tuple[Method, ...] = get_args(Method)
VERIFY_MODES: tuple[VerifyMode, ...] = get_args(VerifyMode)
FAULT_POINTS: tuple[FaultPoint, ...] = get_args(FaultPoint)
SCHEMA_SOURCES: tuple[SchemaSource, ...] = get_args(SchemaSource)
# user_version is a signed 32-bit integer; a migration id past it is not a real one.
MAX_SCHEMA_VERSION = (1 << 31) - 1


class ReportError(ValueError):
    """A worker report that does not follow the protocol."""


# --- job specs: one type per action over a shared base --------------------------------


@dataclass(frozen=True)
class JobSpec:
    """What one worker does, in `dest_dir` (`<dest>/<user>`), within `timeout_seconds`.
    Serialised as JSON (with its `action`) on the worker's stdin."""

    action: ClassVar[Action]
    user: str
    dest_dir: str
    timeout_seconds: float = 900.0

    def to_json(self) -> bytes:
        return json.dumps({"action": self.action, **asdict(self)}).encode()

    @staticmethod
    def from_json(raw: bytes) -> JobSpec:
        """The spec in `raw`, of the type its `action` names.

        Raises ValueError if `raw` is not JSON, names no known action, or has keys or
        values that action's spec does not take (the parent wrote it: this is a bug).
        """
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as error:
            raise ValueError(f"job spec: not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError("job spec must be a JSON object")
        action = data.pop("action", None)
        kind = SPEC_TYPES.get(action) if isinstance(action, str) else None
        if kind is None:
            raise ValueError(f"job spec: unknown action {action!r}")
        try:
            spec = kind(**data)
        except TypeError as error:
            raise ValueError(f"job spec ({action}): {error}") from None
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raises ValueError if a field is outside the vocabulary."""


@dataclass(frozen=True)
class SnapshotSpec(JobSpec):
    """Copy `source`, verify, publish, prune to the retention policy.

    `fault` is a fault-injection boundary for tests only: when set to one of
    FAULT_POINTS, the job SIGKILLs its own process at that point, as a crash or the OOM
    killer would ("after_copy": temp written, before fsync and verify; "during_verify":
    integrity check and hash done, before publish; "after_publish": renamed and
    checksummed, before prune). The parent never sets it and no config key reaches it;
    tests run the worker directly with a spec that does.
    """

    action: ClassVar[Action] = "snapshot"
    source: str = ""
    method: Method = "backup"
    verify: VerifyMode = "quick"
    min_free_bytes: int = 0
    label: str | None = None
    keep: int = 14
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    schema_version: SchemaSource = "auto"
    # Root's record (its ledger, never the user's files) of the newest snapshot it
    # published before this one: a forward schema step keeps it as a guard.
    previous: str | None = None
    previous_schema: int | None = None
    previous_sha256: str | None = None
    keep_schema_guards: int = 3
    # Names retention must keep (a backwards schema step holds the newer versions).
    protect: tuple[str, ...] = ()
    # Names retention keeps if the new snapshot's schema version is below `previous_schema`
    # (the pass that first sees a backwards step prunes none of them either).
    protect_on_downgrade: tuple[str, ...] = ()
    fault: FaultPoint | None = None

    def __post_init__(self) -> None:
        for key in ("protect", "protect_on_downgrade"):  # JSON gives lists
            object.__setattr__(self, key, tuple(getattr(self, key)))

    def validate(self) -> None:
        if self.previous is not None and parse_name(self.previous) is None:
            raise ValueError(f"job spec: previous {self.previous!r} is not a snapshot name")
        if self.previous_sha256 is not None and not _is_sha256(self.previous_sha256):
            raise ValueError("job spec: previous_sha256 is not a sha256 digest")
        if not all(isinstance(n, str) for n in (*self.protect, *self.protect_on_downgrade)):
            raise ValueError("job spec: protect must be snapshot names")
        _require("method", self.method, METHODS)
        _require("verify", self.verify, VERIFY_MODES)
        _require("schema_version", self.schema_version, SCHEMA_SOURCES)
        if self.fault is not None:
            _require("fault", self.fault, FAULT_POINTS)


@dataclass(frozen=True)
class InventorySpec(JobSpec):
    """List the snapshots in `dest_dir`."""

    action: ClassVar[Action] = "inventory"


@dataclass(frozen=True)
class VerifySpec(JobSpec):
    """Check every snapshot (or only the newest) against its checksum and SQLite."""

    action: ClassVar[Action] = "verify"
    verify: VerifyMode = "full"
    latest_only: bool = False

    def validate(self) -> None:
        _require("verify", self.verify, VERIFY_MODES)


@dataclass(frozen=True)
class RestoreSpec(JobSpec):
    """Restore `snapshot` (a name, "latest" or a label) to the new file `target`, or with
    `in_place` into the live database `source`; `check_only`: choose, verify and look
    for processes holding the database, write nothing."""

    action: ClassVar[Action] = "restore"
    source: str = ""
    snapshot: str = "latest"
    target: str = ""
    force: bool = False
    in_place: bool = False
    check_only: bool = False
    # In place: take the `pre-restore` snapshot in the same worker, under the live
    # database's write lock that the restore then holds until it has committed.
    safety_snapshot: bool = False
    method: Method = "backup"
    verify: VerifyMode = "quick"
    min_free_bytes: int = 0

    # Restore from offsite: the bytes arrive on this inherited pipe descriptor (-1: a
    # local restore) and must have exactly this size and sha256 (recorded at publish).
    stream_fd: int = -1
    expected_bytes: int = 0
    expected_sha256: str = ""

    def validate(self) -> None:
        _require("method", self.method, METHODS)
        _require("verify", self.verify, VERIFY_MODES)


@dataclass(frozen=True)
class AdoptSpec(JobSpec):
    """Give each snapshot in `dest_dir` that has no `NAME.sha256` (the legacy script's)
    one, after a full integrity check; an existing checksum file is never replaced."""

    action: ClassVar[Action] = "adopt"


@dataclass(frozen=True)
class StreamSpec(JobSpec):
    """Write a header line and then the bytes of the published snapshot `snapshot` (an
    exact file name) to the inherited pipe descriptor `stream_fd` (offsite upload)."""

    action: ClassVar[Action] = "stream"
    snapshot: str = ""
    stream_fd: int = -1


SPEC_TYPES: dict[str, type[JobSpec]] = {
    kind.action: kind
    for kind in (SnapshotSpec, InventorySpec, VerifySpec, RestoreSpec, AdoptSpec, StreamSpec)
}


def _require(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"job spec: {name} {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot in a user's directory, as the worker saw it."""

    name: str
    time: float
    bytes: int
    label: str | None
    has_checksum: bool = True
    # The app's schema version read from the snapshot itself (None: unknown, or not read).
    schema_version: int | None = None
    # Only in a snapshot job's `snapshot` (what it just published): the sha256 it hashed
    # before publishing. Root records it in its ledger (root/ledger.py); a listing never
    # carries one (the file beside a snapshot is the user's to rewrite).
    sha256: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    name: str
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True)
class Report:
    """A worker's result. `status` ok/failed/skipped; `reason` set unless ok."""

    action: Action
    status: Status
    reason: Reason | None = None
    message: str = ""
    snapshot: SnapshotInfo | None = None
    source_bytes: int = 0
    duration_s: float = 0.0
    snapshots: tuple[SnapshotInfo, ...] = ()
    pruned: tuple[str, ...] = ()
    verified: tuple[VerifyResult, ...] = ()
    protocol: int = PROTOCOL_VERSION
    extra: dict[str, str] = field(default_factory=dict)
    # Bytes on disk of everything in the user's directory (snapshots or not), measured
    # by their worker (snapshot, inventory) and capped: a lower bound when capped.
    dir_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


# A snapshot result's `extra` key that root adds after parsing (never admitted from a
# worker): the schema version a backwards step holds retention at.
SCHEMA_HOLD = "schema_hold"


@dataclass(frozen=True)
class UserResult:
    """One user's job in a pass, as the root side saw it: the (parsed) report and when."""

    user: User
    report: Report
    started: float  # wall-clock epoch seconds
    duration_s: float

    @property
    def finished(self) -> float:
        return self.started + self.duration_s


def failed(action: Action, reason: Reason, message: str, **kwargs: Any) -> Report:
    """A failure report (used by the parent too, e.g. for `worker_crashed`)."""
    return Report(action=action, status="failed", reason=reason, message=message, **kwargs)


# --- strict parsing -------------------------------------------------------------------


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


def printable(text: str) -> str:
    """`text` with every control (non-printable) character as "?": what a user wrote
    ends up in logs and terminals."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _clean_text(value: object, where: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if not isinstance(value, str):
        raise ReportError(f"{where}: expected a string")
    return printable(value)[:limit]


def _int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise ReportError(f"{where}: expected a non-negative integer")
    return value


def _float(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{where}: expected a number")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= 1e11:
        raise ReportError(f"{where}: out of range")
    return number


def _object(value: object, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"{where}: expected an object")
    unknown = set(value) - allowed
    if unknown:
        raise ReportError(f"{where}: unknown keys {sorted(unknown)}")
    return value


def _snapshot(value: object, where: str) -> SnapshotInfo:
    data = _object(
        value,
        where,
        {"name", "time", "bytes", "label", "has_checksum", "schema_version", "sha256"},
    )
    name = data.get("name")
    if not isinstance(name, str) or parse_name(name) is None:
        raise ReportError(f"{where}.name: not a snapshot name")
    label = data.get("label")
    if label is not None and (not isinstance(label, str) or not is_valid_label(label)):
        raise ReportError(f"{where}.label: invalid")
    has_checksum = data.get("has_checksum", True)
    if not isinstance(has_checksum, bool):
        raise ReportError(f"{where}.has_checksum: expected a boolean")
    digest = data.get("sha256")
    if digest is not None and (not isinstance(digest, str) or not _is_sha256(digest)):
        raise ReportError(f"{where}.sha256: not a sha256 digest")
    return SnapshotInfo(
        name=name,
        time=_float(data.get("time"), f"{where}.time"),
        bytes=_int(data.get("bytes"), f"{where}.bytes"),
        label=label,
        has_checksum=has_checksum,
        schema_version=_schema_version(data.get("schema_version"), f"{where}.schema_version"),
        sha256=digest,
    )


def _schema_version(value: object, where: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_SCHEMA_VERSION:
        raise ReportError(f"{where}: expected an integer from 0 to {MAX_SCHEMA_VERSION}")
    return value


def parse_report(raw: bytes, expected_action: Action) -> Report:
    """Parse a worker's stdout strictly. Raises ReportError if anything is off."""
    data = _report_object(raw)
    action, status, reason = _outcome(data, expected_action)
    snapshots_raw = _bounded_list(data, "snapshots")
    pruned = _pruned(_bounded_list(data, "pruned"))
    verified = _verified(_bounded_list(data, "verified"))
    extra = _extra(data.get("extra", {}))
    snapshot_raw = data.get("snapshot")
    return Report(
        action=action,
        status=status,
        reason=reason,
        message=_clean_text(data.get("message", ""), "message"),
        snapshot=None if snapshot_raw is None else _snapshot(snapshot_raw, "snapshot"),
        source_bytes=_int(data.get("source_bytes", 0), "source_bytes"),
        duration_s=_float(data.get("duration_s", 0.0), "duration_s"),
        snapshots=tuple(
            _snapshot(item, f"snapshots[{index}]") for index, item in enumerate(snapshots_raw)
        ),
        pruned=pruned,
        verified=verified,
        extra=extra,
        dir_bytes=_int(data.get("dir_bytes", 0), "dir_bytes"),
    )


def _report_object(raw: bytes) -> dict[str, Any]:
    """The one bounded JSON line, as an object of known report fields."""
    if len(raw) > MAX_REPORT_BYTES:
        raise ReportError("report too large")
    lines = raw.strip().splitlines()
    if len(lines) != 1:
        raise ReportError(f"expected one report line, got {len(lines)}")
    try:
        data = json.loads(lines[0])
    except (ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and integers past
        # Python's digit limit; RecursionError comes from deeply nested arrays.
        raise ReportError(f"not JSON: {str(error)[:200]}") from None
    return _object(data, "report", {field_name for field_name in Report.__dataclass_fields__})


def _outcome(data: dict[str, Any], expected_action: Action) -> tuple[Action, Status, Reason | None]:
    """(action, status, reason): this protocol, the action asked for, and a status with a
    reason the worker may give for it."""
    protocol = data.get("protocol")
    # type() check: `true` and `1.0` compare equal to 1 in Python.
    if type(protocol) is not int or protocol != PROTOCOL_VERSION:
        raise ReportError("wrong protocol version")
    action = data.get("action")
    if action != expected_action:
        raise ReportError(f"action {action!r}, expected {expected_action!r}")
    status = data.get("status")
    if status not in STATUSES:
        raise ReportError("status: invalid")
    reason = data.get("reason")
    if status == "ok" and reason is not None:
        raise ReportError("reason: must be null when ok")
    allowed_failures = FAILURE_REASONS + (
        RESTORE_FAILURE_REASONS if action in ("restore", "stream") else ()
    )
    # `worker_stuck` is the parent's finding about a worker, never a worker's to claim.
    if status == "failed" and (reason not in allowed_failures or reason in PARENT_ONLY_REASONS):
        raise ReportError("reason: not a known failure reason")
    if status == "skipped" and reason not in SKIP_REASONS:
        raise ReportError("reason: not a known skip reason")
    return expected_action, status, reason


def _bounded_list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_SNAPSHOTS_IN_REPORT:
        raise ReportError(f"{key}: expected a list (bounded)")
    return value


def _pruned(items: list[Any]) -> tuple[str, ...]:
    for index, name in enumerate(items):
        if not isinstance(name, str) or parse_name(name) is None:
            raise ReportError(f"pruned[{index}]: not a snapshot name")
    return tuple(items)


def _verified(items: list[Any]) -> tuple[VerifyResult, ...]:
    verified = []
    for index, item in enumerate(items):
        entry = _object(item, f"verified[{index}]", {"name", "outcome", "detail"})
        name = entry.get("name")
        if not isinstance(name, str) or parse_name(name) is None:
            raise ReportError(f"verified[{index}].name: not a snapshot name")
        if entry.get("outcome") not in VERIFY_OUTCOMES:
            raise ReportError(f"verified[{index}].outcome: invalid")
        verified.append(
            VerifyResult(name, entry["outcome"], _clean_text(entry.get("detail", ""), "detail"))
        )
    return tuple(verified)


def _extra(value: object) -> dict[str, str]:
    """The known `extra` keys, as bounded clean texts; digests, counts and names checked."""
    extra_raw = _object(
        value,
        "extra",
        {"restored_from", "undo", "target", "pre_restore", "sha256", "skipped_future",
         "pre_restore_bytes", "pre_restore_sha256", "schema_guard"},
    )  # fmt: skip
    extra = {key: _clean_text(item, f"extra.{key}", 4096) for key, item in extra_raw.items()}
    for key in ("sha256", "pre_restore_sha256"):
        if key in extra and not _is_sha256(extra[key]):
            raise ReportError(f"extra.{key}: not a sha256 digest")
    if "pre_restore_bytes" in extra and not (
        extra["pre_restore_bytes"].isascii() and extra["pre_restore_bytes"].isdigit()
        and len(extra["pre_restore_bytes"]) <= 18
    ):  # fmt: skip
        raise ReportError("extra.pre_restore_bytes: not a byte count")
    for key in ("restored_from", "pre_restore", "skipped_future", "schema_guard"):
        if key in extra and parse_name(extra[key]) is None:
            raise ReportError(f"extra.{key}: not a snapshot name")
    return extra
