"""The parent <-> worker protocol: a job spec in (stdin), one JSON report out (stdout).

The worker runs as the user, who can tamper with it, so the parent treats its report
as hostile input: `parse_report` enforces a size cap, the schema, types, ranges and
name patterns, and rejects anything else (the caller then counts `worker_crashed`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from t3backupd.core.naming import is_valid_label, parse_name
from t3backupd.core.usermap import User

PROTOCOL_VERSION = 1
MAX_REPORT_BYTES = 1 << 20
MAX_SNAPSHOTS_IN_REPORT = 10_000
MAX_MESSAGE_CHARS = 500
ACTIONS = ("snapshot", "inventory", "verify", "restore")
STATUSES = ("ok", "failed", "skipped")
FAILURE_REASONS = (
    "timeout",
    "sqlite_error",
    "verify_failed",
    "permission",
    "disk_space",
    "worker_crashed",
    "busy",
)
SKIP_REASONS = ("no_source",)
# Restore-only failures (never snapshot metrics labels): no such snapshot, --to target
# exists, database held open by a process of the user.
RESTORE_FAILURE_REASONS = ("not_found", "exists", "in_use")
VERIFY_OUTCOMES = ("ok", "checksum_mismatch", "integrity_error", "missing_checksum", "unreadable")
MAX_INT = 1 << 62
# Test-only kill points of a snapshot job (see JobSpec.fault).
FAULT_POINTS = ("after_copy", "during_verify", "after_publish")


class ReportError(ValueError):
    """A worker report that does not follow the protocol."""


@dataclass(frozen=True)
class JobSpec:
    """What one worker does. Serialised as JSON on the worker's stdin.

    `fault` is a fault-injection boundary for tests only: when set to one of
    FAULT_POINTS, a snapshot job SIGKILLs its own process at that point, as a crash
    or the OOM killer would ("after_copy": temp written, before fsync and verify;
    "during_verify": integrity check and hash done, before publish; "after_publish":
    renamed and checksummed, before prune). The parent never sets it and no config key
    reaches it; tests run the worker directly with a spec that does.
    """

    action: str
    user: str
    dest_dir: str
    source: str = ""
    method: str = "backup"
    verify: str = "quick"
    timeout_seconds: float = 900.0
    min_free_bytes: int = 0
    label: str | None = None
    keep: int = 14
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    # verify / restore
    snapshot: str | None = None
    latest_only: bool = False
    target: str = ""
    force: bool = False
    in_place: bool = False  # restore into `source` (the live database), not `target`
    check_only: bool = False  # restore: choose + verify + open-process check, write nothing
    fault: str | None = None  # tests only: kill point, one of FAULT_POINTS

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JobSpec:
        """Raises ValueError if `raw` is not a spec (the parent wrote it, so this is a bug)."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("job spec must be a JSON object")
        spec = cls(**data)
        if spec.fault is not None and spec.fault not in FAULT_POINTS:
            raise ValueError(f"job spec: unknown fault point {spec.fault!r}")
        return spec


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot in a user's directory, as the worker saw it."""

    name: str
    time: float
    bytes: int
    label: str | None
    has_checksum: bool = True


@dataclass(frozen=True)
class VerifyResult:
    name: str
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class Report:
    """A worker's result. `status` ok/failed/skipped; `reason` set unless ok."""

    action: str
    status: str
    reason: str | None = None
    message: str = ""
    snapshot: SnapshotInfo | None = None
    source_bytes: int = 0
    duration_s: float = 0.0
    snapshots: tuple[SnapshotInfo, ...] = ()
    pruned: tuple[str, ...] = ()
    verified: tuple[VerifyResult, ...] = ()
    protocol: int = PROTOCOL_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


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


def failed(action: str, reason: str, message: str, **kwargs: Any) -> Report:
    """A failure report (used by the parent too, e.g. for `worker_crashed`)."""
    return Report(action=action, status="failed", reason=reason, message=message, **kwargs)


# --- strict parsing -------------------------------------------------------------------


def _clean_text(value: object, where: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if not isinstance(value, str):
        raise ReportError(f"{where}: expected a string")
    # No control characters: messages end up in logs and terminals.
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in value)
    return cleaned[:limit]


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
    data = _object(value, where, {"name", "time", "bytes", "label", "has_checksum"})
    name = data.get("name")
    if not isinstance(name, str) or parse_name(name) is None:
        raise ReportError(f"{where}.name: not a snapshot name")
    label = data.get("label")
    if label is not None and (not isinstance(label, str) or not is_valid_label(label)):
        raise ReportError(f"{where}.label: invalid")
    has_checksum = data.get("has_checksum", True)
    if not isinstance(has_checksum, bool):
        raise ReportError(f"{where}.has_checksum: expected a boolean")
    return SnapshotInfo(
        name=name,
        time=_float(data.get("time"), f"{where}.time"),
        bytes=_int(data.get("bytes"), f"{where}.bytes"),
        label=label,
        has_checksum=has_checksum,
    )


def parse_report(raw: bytes, expected_action: str) -> Report:
    """Parse a worker's stdout strictly. Raises ReportError if anything is off."""
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
    data = _object(data, "report", {field_name for field_name in Report.__dataclass_fields__})
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
    allowed_failures = FAILURE_REASONS + (RESTORE_FAILURE_REASONS if action == "restore" else ())
    if status == "failed" and reason not in allowed_failures:
        raise ReportError("reason: not a known failure reason")
    if status == "skipped" and reason not in SKIP_REASONS:
        raise ReportError("reason: not a known skip reason")
    snapshots_raw = data.get("snapshots", [])
    if not isinstance(snapshots_raw, list) or len(snapshots_raw) > MAX_SNAPSHOTS_IN_REPORT:
        raise ReportError("snapshots: expected a list (bounded)")
    pruned_raw = data.get("pruned", [])
    if not isinstance(pruned_raw, list) or len(pruned_raw) > MAX_SNAPSHOTS_IN_REPORT:
        raise ReportError("pruned: expected a list (bounded)")
    pruned = []
    for index, name in enumerate(pruned_raw):
        if not isinstance(name, str) or parse_name(name) is None:
            raise ReportError(f"pruned[{index}]: not a snapshot name")
        pruned.append(name)
    verified_raw = data.get("verified", [])
    if not isinstance(verified_raw, list) or len(verified_raw) > MAX_SNAPSHOTS_IN_REPORT:
        raise ReportError("verified: expected a list (bounded)")
    verified = []
    for index, item in enumerate(verified_raw):
        entry = _object(item, f"verified[{index}]", {"name", "outcome", "detail"})
        name = entry.get("name")
        if not isinstance(name, str) or parse_name(name) is None:
            raise ReportError(f"verified[{index}].name: not a snapshot name")
        if entry.get("outcome") not in VERIFY_OUTCOMES:
            raise ReportError(f"verified[{index}].outcome: invalid")
        verified.append(
            VerifyResult(name, entry["outcome"], _clean_text(entry.get("detail", ""), "detail"))
        )
    extra_raw = _object(data.get("extra", {}), "extra", {"restored_from", "undo", "target"})
    extra = {key: _clean_text(value, f"extra.{key}", 4096) for key, value in extra_raw.items()}
    if "restored_from" in extra and parse_name(extra["restored_from"]) is None:
        raise ReportError("extra.restored_from: not a snapshot name")
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
        pruned=tuple(pruned),
        verified=tuple(verified),
        extra=extra,
    )
