"""Prometheus metrics: exactly the names, types and labels in docs/reference.md, "Metrics".

`Metrics` is a custom collector on a registry passed in (never the import-time default
one, which carries process/gc noise). It keeps plain per-user records under one lock
and builds the metric families at scrape time, so that

- removing a user removes every series of theirs at once (reload),
- a scrape sees one consistent state (a pass updates several values per user),
- counters carry no `_created` series (not in the contract; the client library's
  switch for it is process-global).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from t3backupd import __version__
from t3backupd.core.naming import guard_version
from t3backupd.core.protocol import FAILURE_REASONS, SCHEMA_HOLD, SnapshotInfo, UserResult
from t3backupd.core.retention import is_future_timestamp, newest_current

PREFIX = "t3backup_"


def _new_failures() -> dict[str, int]:
    return dict.fromkeys(FAILURE_REASONS, 0)


@dataclass
class _UserRecord:
    """Everything exported for one user. 0 means "never" / "unknown"."""

    last_success: float = 0.0
    last_attempt: float = 0.0
    last_snapshot_size: int = 0
    source_size: int = 0
    snapshots: int = 0
    duration: float = 0.0
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=_new_failures)
    verify_failures: int = 0
    last_verify: float = 0.0
    worker_stuck: int = 0
    dir_bytes: int = 0
    inventory_pending: bool = False
    result_at: float = 0.0  # end of the last pass result recorded (wall clock), 0 = none
    schema_version: int | None = None  # of the newest snapshot; None: not known (no series)
    schema_backwards: int = 0  # 1 while a backwards schema step holds retention
    schema_guards: int = 0  # `--schema-N` snapshots kept (the user's listing)

    def apply(self, result: UserResult) -> None:
        """Count one snapshot attempt of this user's (`Metrics.record_result`)."""
        report = result.report
        self.attempts += 1
        self.result_at = result.finished
        self.last_attempt = result.started
        self.worker_stuck = int(report.reason == "worker_stuck")
        self.schema_backwards = int(SCHEMA_HOLD in report.extra)
        if report.dir_bytes:
            self.dir_bytes = report.dir_bytes
        self.duration = result.duration_s
        if report.source_bytes:
            self.source_size = report.source_bytes
        if (
            report.ok
            and report.snapshot is not None
            and not is_future_timestamp(report.snapshot.time, time.time())
        ):
            # A worker reporting a future time (a forged report) is not the newest.
            self.last_success = report.snapshot.time
            self.last_snapshot_size = report.snapshot.bytes
            if report.snapshot.schema_version is not None:
                self.schema_version = report.snapshot.schema_version
        if report.ok or report.snapshots:
            self.snapshots = len(report.snapshots)
            self.schema_guards = sum(
                guard_version(info.label) is not None for info in report.snapshots
            )
        if report.status == "failed":
            # The protocol only admits known reasons; anything else is a crash.
            reason = report.reason if report.reason in self.failures else "worker_crashed"
            self.failures[reason] += 1


# (name, help, attribute of _UserRecord) for the per-user gauges, in exposition order.
_USER_GAUGES = (
    ("last_success_timestamp_seconds", "Time of the newest published snapshot (0 = never).",
     "last_success"),
    ("last_attempt_timestamp_seconds", "Time of the last snapshot attempt (0 = none since start).",
     "last_attempt"),
    ("last_snapshot_size_bytes", "Size of the newest snapshot in bytes.", "last_snapshot_size"),
    ("source_size_bytes", "Size of the source database plus WAL at the last attempt.",
     "source_size"),
    ("snapshots", "Snapshots kept for the user.", "snapshots"),
    ("snapshot_duration_seconds", "Duration of the last snapshot attempt.", "duration"),
    ("last_verify_timestamp_seconds", "Time of the last verification of the user's snapshots.",
     "last_verify"),
    ("worker_stuck", "1 while the user's worker outlived SIGKILL unreaped (user skipped).",
     "worker_stuck"),
    ("user_dir_bytes", "Disk usage of the user's backup directory, all files (capped walk).",
     "dir_bytes"),
    ("inventory_pending", "1 while the user's snapshots are being listed (after start or a "
     "reload); their values are the last known ones until then.", "inventory_pending"),
    ("schema_backwards", "1 while the user's schema version went backwards and retention "
     "holds the newer version's snapshots (until snapshot --accept-schema-downgrade).",
     "schema_backwards"),
    ("schema_guards", "Schema guards (the last snapshot of an old schema version, "
     "state-...--schema-N) kept for the user.", "schema_guards"),
)  # fmt: skip

# Components whose unexpected exceptions are counted in internal_errors_total.
COMPONENTS = ("main_loop", "metrics_endpoint")


class Metrics:
    """The daemon's metrics. Thread-safe: passes record from their own threads."""

    def __init__(
        self,
        registry: CollectorRegistry,
        version: str = __version__,
        sqlite_version: str = sqlite3.sqlite_version,
    ) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, _UserRecord] = {}
        self._next_run = 0.0
        self._schedule_interval = 0.0
        self._reload_successful = 0.0
        self._reload_success_time = 0.0
        self._build = (version, sqlite_version)
        # Verify series exist only while `[verify] cron` schedules verification: a 0
        # timestamp for a check that never runs would read as "56 years ago".
        self._verify_enabled = False
        self._internal_errors = dict.fromkeys(COMPONENTS, 0)
        self._bind_failures = 0
        self._rejected = 0
        self._socket_activated = 0.0
        # Bumped by every update; a scrape reuses the families built for the current
        # generation (between passes every scrape is the same: no rebuild for 16k series).
        self._generation = 0
        self._cached: tuple[int, list[Metric]] | None = None
        registry.register(self)

    # --- updates ---------------------------------------------------------------------

    def set_users(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make `names` the exported users: new ones start at 0, gone ones lose every series.

        Returns (added, removed), each sorted.
        """
        wanted = list(dict.fromkeys(names))
        with self._lock:
            self._generation += 1
            removed = sorted(set(self._users) - set(wanted))
            added = sorted(set(wanted) - set(self._users))
            for name in removed:
                del self._users[name]
            for name in added:
                self._users[name] = _UserRecord()
        return added, removed

    def restore(
        self, user: str, snapshots: Sequence[SnapshotInfo], listed_at: float | None = None
    ) -> None:
        """Set what is on disk (from an inventory): newest snapshot's time and size, count.
        A future-dated name (a clock fault, or planted) is counted but never the newest.

        Ignored if a pass recorded a result for the user after the listing began at
        `listed_at` (wall clock): that result saw the disk later.
        """
        newest = newest_current(snapshots, lambda info: info.time, time.time())
        # What is on disk is the truth: no snapshots there (e.g. dest moved) = never.
        self.restore_summary(
            user,
            len(snapshots),
            newest.time if newest is not None else 0.0,
            newest.bytes if newest is not None else 0,
            listed_at,
        )

    def restore_summary(
        self, user: str, count: int, newest: float, newest_bytes: int,
        listed_at: float | None = None,
    ) -> None:  # fmt: skip
        """`restore` from a summary (the state file's last known values)."""
        with self._lock:
            self._generation += 1
            record = self._users.get(user)
            if record is None:
                return
            if listed_at is not None and record.result_at >= listed_at:
                return
            record.snapshots = count
            record.last_success = newest
            record.last_snapshot_size = newest_bytes

    def set_pending(self, names: Iterable[str], pending: bool) -> None:
        """Mark users as being inventoried (or done); unknown names are ignored."""
        with self._lock:
            self._generation += 1
            for name in names:
                record = self._users.get(name)
                if record is not None:
                    record.inventory_pending = pending

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(name for name, record in self._users.items() if record.inventory_pending)

    def known(self) -> dict[str, tuple[int, float, int]]:
        """Each user's (snapshots, newest time, newest bytes), for the state file."""
        with self._lock:
            return {
                name: (record.snapshots, record.last_success, record.last_snapshot_size)
                for name, record in self._users.items()
            }

    def count_internal_error(self, component: str) -> None:
        with self._lock:
            self._generation += 1
            if component in self._internal_errors:
                self._internal_errors[component] += 1

    def count_endpoint_event(self, kind: str) -> None:
        """ "bind_failed" (the endpoint could not listen) or "rejected" (connection bound)."""
        with self._lock:
            self._generation += 1
            if kind == "bind_failed":
                self._bind_failures += 1
            elif kind == "rejected":
                self._rejected += 1

    def set_socket_activated(self, activated: bool) -> None:
        with self._lock:
            self._generation += 1
            self._socket_activated = 1.0 if activated else 0.0

    def record_result(self, result: UserResult) -> None:
        """Count one snapshot attempt. Results for users no longer served are dropped
        (a pass started before a reload must not bring a removed user's series back)."""
        with self._lock:
            self._generation += 1
            record = self._users.get(result.user.name)
            if record is not None:
                record.apply(result)

    def record_dir_bytes(self, user: str, size: int) -> None:
        """The user's directory usage as their inventory worker measured it."""
        with self._lock:
            record = self._users.get(user)
            if record is not None and size:
                self._generation += 1
                record.dir_bytes = size

    def record_verify(self, user: str, failures: int, when: float) -> None:
        """Count a verification run of `user`'s snapshots that found `failures` bad ones."""
        with self._lock:
            self._generation += 1
            record = self._users.get(user)
            if record is None:
                return
            record.verify_failures += max(0, failures)
            record.last_verify = when

    def set_verify_enabled(self, enabled: bool) -> None:
        """Export the per-user verify series (only while verification is scheduled)."""
        with self._lock:
            self._generation += 1
            self._verify_enabled = enabled

    def set_next_run(self, when: float | None) -> None:
        """Epoch seconds of the next scheduled pass (None: none scheduled -> 0)."""
        with self._lock:
            self._generation += 1
            self._next_run = 0.0 if when is None else when

    def set_schedule_interval(self, seconds: float) -> None:
        """The longest wait between two scheduled passes (scheduler.longest_interval)."""
        with self._lock:
            self._generation += 1
            self._schedule_interval = seconds

    def config_loaded(self, successful: bool, when: float) -> None:
        """Record a (re)load of config + usermap, as Prometheus' own reload metrics do."""
        with self._lock:
            self._generation += 1
            self._reload_successful = 1.0 if successful else 0.0
            if successful:
                self._reload_success_time = when

    # --- collection ------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families without samples (lets the registry detect name clashes)."""
        yield from build_families(_State({}, 0.0, 0.0, 0.0, 0.0, True, {}, 0, 0, 0.0, self._build))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or self._cached[0] != self._generation:
                # Built under the lock, so the records can be read as they are.
                state = _State(
                    users=dict(self._users),
                    next_run=self._next_run,
                    schedule_interval=self._schedule_interval,
                    reload_successful=self._reload_successful,
                    reload_success_time=self._reload_success_time,
                    verify_enabled=self._verify_enabled,
                    internal_errors=dict(self._internal_errors),
                    bind_failures=self._bind_failures,
                    rejected=self._rejected,
                    socket_activated=self._socket_activated,
                    build=self._build,
                )
                self._cached = (self._generation, build_families(state))
            families = self._cached[1]
        yield from families


@dataclass(frozen=True)
class _State:
    """A consistent copy of everything exported, taken under the lock for one scrape."""

    users: dict[str, _UserRecord]
    next_run: float
    schedule_interval: float
    reload_successful: float
    reload_success_time: float
    verify_enabled: bool
    internal_errors: dict[str, int]
    bind_failures: int
    rejected: int
    socket_activated: float
    build: tuple[str, str]


# --- the families a scrape reads, built from one consistent copy ------------------------


def build_families(state: _State) -> list[Metric]:
    """Every family, in exposition order: per user, then the daemon's own."""
    return [*_user_families(state), *_daemon_families(state)]


def _user_families(state: _State) -> list[Metric]:
    """The per-user gauges and counters (verify series only while verify is scheduled)."""
    names = sorted(state.users)
    found: list[Metric] = []
    for suffix, help_text, attribute in _USER_GAUGES:
        gauge = GaugeMetricFamily(PREFIX + suffix, help_text, labels=["user"])
        if attribute != "last_verify" or state.verify_enabled:
            for name in names:
                gauge.add_metric([name], float(getattr(state.users[name], attribute)))
        found.append(gauge)
    attempts = CounterMetricFamily(PREFIX + "attempts_total", "Snapshot attempts.", labels=["user"])
    failures = CounterMetricFamily(
        PREFIX + "failures_total",
        "Failed snapshot attempts by reason.",
        labels=["user", "reason"],
    )
    verify_failures = CounterMetricFamily(
        PREFIX + "verify_failures_total",
        "Snapshots found bad (checksum or integrity) by verification.",
        labels=["user"],
    )
    schema = GaugeMetricFamily(
        PREFIX + "schema_version",
        "The app's schema version in the newest snapshot (no series while unknown).",
        labels=["user"],
    )
    for name in names:
        record = state.users[name]
        attempts.add_metric([name], record.attempts)
        for reason in FAILURE_REASONS:
            failures.add_metric([name, reason], record.failures[reason])
        if state.verify_enabled:
            verify_failures.add_metric([name], record.verify_failures)
        if record.schema_version is not None:
            schema.add_metric([name], float(record.schema_version))
    return [*found, attempts, failures, verify_failures, schema]


def _daemon_families(state: _State) -> list[Metric]:
    """The daemon's own series: users, schedule, config reloads, errors, endpoint, build."""
    scalars = (
        ("users", "Users in the usermap that resolved.", len(state.users)),
        ("next_run_timestamp_seconds", "Time of the next scheduled pass.", state.next_run),
        (
            "schedule_interval_seconds",
            "Longest wait between two scheduled passes (plus jitter); the staleness "
            "alerts allow this plus 2h.",
            state.schedule_interval,
        ),
        (
            "config_last_reload_successful",
            "Whether the last config (re)load succeeded (1) or was refused (0).",
            state.reload_successful,
        ),
        (
            "config_last_reload_success_timestamp_seconds",
            "Time of the last successful config (re)load.",
            state.reload_success_time,
        ),
    )
    found: list[Metric] = [
        GaugeMetricFamily(PREFIX + suffix, help_text, value=value)
        for suffix, help_text, value in scalars
    ]
    errors = CounterMetricFamily(
        PREFIX + "internal_errors_total",
        "Unexpected exceptions (bugs) caught and survived, by component.",
        labels=["component"],
    )
    for component in COMPONENTS:
        errors.add_metric([component], state.internal_errors.get(component, 0))
    build = GaugeMetricFamily(
        PREFIX + "build_info",
        "Version of t3backupd and of the SQLite library it uses.",
        labels=["version", "sqlite_version"],
    )
    build.add_metric(list(state.build), 1)
    return [*found, errors, *_endpoint_families(state), build]


def _endpoint_families(state: _State) -> list[Metric]:
    return [
        CounterMetricFamily(
            PREFIX + "metrics_bind_failures_total",
            "Failed attempts to listen on metrics.listen (retried every few seconds).",
            value=state.bind_failures,
        ),
        CounterMetricFamily(
            PREFIX + "metrics_connections_rejected_total",
            "Connections to the endpoint dropped or refused at the concurrent-connection bound.",
            value=state.rejected,
        ),
        GaugeMetricFamily(
            PREFIX + "metrics_socket_activated",
            "1 if the listening socket came from systemd (t3backupd.socket), 0 if bound here.",
            value=state.socket_activated,
        ),
    ]
