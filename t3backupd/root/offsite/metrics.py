"""Offsite metrics (a collector beside the local ones, on the same registry).

Per user: `t3backup_offsite_last_success_timestamp_seconds` (time of the newest copy in
the repository; 0 = none), `t3backup_offsite_failures_total{reason}`,
`t3backup_offsite_bytes_added_total` (restic's `data_added`), `t3backup_offsite_snapshots`,
`t3backup_offsite_quota_reached` (1 while the user's last sync was refused an upload for
their bound, `offsite.max_copies_per_user` / `max_bytes_per_user`).
Daemon-wide: `t3backup_offsite_oldest_copy_timestamp_seconds` (time of the oldest copy
in the repository; 0 = none), and from root's check record (`checkrecord`, loaded at start
and whenever it changes): `t3backup_offsite_last_check_timestamp_seconds` (the last passed
check; 0 = never), `t3backup_offsite_last_check_failure_timestamp_seconds` (the last
failed one; 0 = never), `t3backup_offsite_check_failures_total`,
`t3backup_offsite_first_copy_seen_timestamp_seconds` (when root first saw a copy in the
repository; 0 = never: what T3BackupOffsiteNeverChecked counts from). The copy gauges are
restored from the repository at start, so a restart does not reset "how old is the
newest offsite copy".
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from t3backupd.root.offsite.checkrecord import CheckRecord
from t3backupd.root.offsite.engine import REASONS, OffsiteSnapshot
from t3backupd.root.offsite.sync import UserOffsite

PREFIX = "t3backup_offsite_"


@dataclass
class _Record:
    last_success: float = 0.0
    snapshots: int = 0
    bytes_added: int = 0
    quota_reached: bool = False
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))


class OffsiteMetrics:
    """Thread-safe: the lane records from its own threads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, _Record] = {}
        self._check = CheckRecord()
        self._oldest = 0.0
        registry.register(self)

    def set_users(self, names: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(names))
        with self._lock:
            for name in set(self._users) - set(wanted):
                del self._users[name]
            for name in wanted:
                self._users.setdefault(name, _Record())

    def restore(self, copies: Iterable[OffsiteSnapshot]) -> None:
        """What the repository holds, per served user (newest copy's time, count)."""
        newest: dict[str, float] = {}
        counts: dict[str, int] = {}
        oldest = 0.0
        for copy in copies:
            oldest = min(oldest or copy.meta.time, copy.meta.time)
            user = copy.meta.user
            counts[user] = counts.get(user, 0) + 1
            newest[user] = max(newest.get(user, 0.0), copy.meta.time)
        with self._lock:
            self._oldest = oldest
            for name, record in self._users.items():
                record.snapshots = counts.get(name, 0)
                record.last_success = newest.get(name, 0.0)

    def record(self, outcome: UserOffsite) -> None:
        with self._lock:
            record = self._users.get(outcome.user.name)
            if record is None:
                return
            for error in outcome.failures:
                record.failures[error.reason] = record.failures.get(error.reason, 0) + 1
            record.bytes_added += sum(item.bytes_added for item in outcome.uploaded)
            record.quota_reached = outcome.quota_reached
            for item in outcome.uploaded:
                self._oldest = min(self._oldest or item.meta.time, item.meta.time)
            if outcome.snapshots is not None:
                record.snapshots = outcome.snapshots
                record.last_success = outcome.newest or 0.0

    def first_copy_seen(self) -> float:
        with self._lock:
            return self._check.first_copy_seen

    def count_failure(self, user: str, reason: str) -> None:
        """One failure of `user` found outside a sync (e.g. an untrusted copy by a check)."""
        with self._lock:
            record = self._users.get(user)
            if record is not None:
                record.failures[reason] = record.failures.get(reason, 0) + 1

    def set_check_record(self, record: CheckRecord) -> None:
        with self._lock:
            self._check = record

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            users = {name: (r.last_success, r.snapshots, r.bytes_added, dict(r.failures))
                     for name, r in self._users.items()}  # fmt: skip
            quota = {name: r.quota_reached for name, r in self._users.items()}
            checked, oldest = self._check, self._oldest
        last = GaugeMetricFamily(
            PREFIX + "last_success_timestamp_seconds",
            "Time of the user's newest copy in the offsite repository (0 = none).",
            labels=["user"],
        )
        snapshots = GaugeMetricFamily(
            PREFIX + "snapshots", "Offsite copies kept for the user.", labels=["user"]
        )
        added = CounterMetricFamily(
            PREFIX + "bytes_added",
            "Bytes the repository grew by for the user's uploads (after deduplication).",
            labels=["user"],
        )
        failures = CounterMetricFamily(
            PREFIX + "failures",
            "Offsite failures of the user, by reason.",
            labels=["user", "reason"],
        )
        quota_reached = GaugeMetricFamily(
            PREFIX + "quota_reached",
            "1 while the user's offsite uploads are refused for their bound "
            "(offsite.max_copies_per_user / max_bytes_per_user).",
            labels=["user"],
        )
        for name in sorted(users):
            when, count, total, by_reason = users[name]
            quota_reached.add_metric([name], 1.0 if quota[name] else 0.0)
            last.add_metric([name], when)
            snapshots.add_metric([name], count)
            added.add_metric([name], total)
            for reason in REASONS:
                failures.add_metric([name, reason], by_reason.get(reason, 0))
        check = GaugeMetricFamily(
            PREFIX + "last_check_timestamp_seconds",
            "Time of the last successful offsite check and restore drill (0 = never).",
            value=checked.last_passed,
        )
        check_failure = GaugeMetricFamily(
            PREFIX + "last_check_failure_timestamp_seconds",
            "Time of the last failed offsite check or restore drill (0 = never).",
            value=checked.last_failed,
        )
        check_failed = CounterMetricFamily(
            PREFIX + "check_failures", "Failed offsite checks.", value=checked.failures
        )
        oldest_copy = GaugeMetricFamily(
            PREFIX + "oldest_copy_timestamp_seconds",
            "Time of the oldest copy in the offsite repository (0 = none).",
            value=oldest,
        )
        first_seen = GaugeMetricFamily(
            PREFIX + "first_copy_seen_timestamp_seconds",
            "When root first saw a copy in the offsite repository (0 = never).",
            value=checked.first_copy_seen,
        )
        yield from (last, failures, added, snapshots, quota_reached, check, check_failure,
                    check_failed, oldest_copy, first_seen)  # fmt: skip
