"""Metrics: DESIGN's names, types and labels; restore from disk; user set changes; serving."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from t3backupd.core.protocol import (
    FAILURE_REASONS,
    SCHEMA_HOLD,
    Report,
    SnapshotInfo,
    UserResult,
    failed,
)
from t3backupd.core.usermap import User
from t3backupd.root.metrics import Metrics

# DESIGN.md, section Metrics (+ the verify feature's two series): name -> (type, labels).
DESIGN_METRICS = {
    "t3backup_last_success_timestamp_seconds": ("gauge", {"user"}),
    "t3backup_last_attempt_timestamp_seconds": ("gauge", {"user"}),
    "t3backup_last_snapshot_size_bytes": ("gauge", {"user"}),
    "t3backup_source_size_bytes": ("gauge", {"user"}),
    "t3backup_snapshots": ("gauge", {"user"}),
    "t3backup_snapshot_duration_seconds": ("gauge", {"user"}),
    "t3backup_attempts_total": ("counter", {"user"}),
    "t3backup_failures_total": ("counter", {"user", "reason"}),
    "t3backup_users": ("gauge", set()),
    "t3backup_next_run_timestamp_seconds": ("gauge", set()),
    "t3backup_schedule_interval_seconds": ("gauge", set()),
    "t3backup_config_last_reload_successful": ("gauge", set()),
    "t3backup_config_last_reload_success_timestamp_seconds": ("gauge", set()),
    "t3backup_build_info": ("gauge", {"version", "sqlite_version"}),
    "t3backup_verify_failures_total": ("counter", {"user"}),
    "t3backup_last_verify_timestamp_seconds": ("gauge", {"user"}),
    # issue 10: a user skipped because their worker outlived SIGKILL unreaped.
    "t3backup_worker_stuck": ("gauge", {"user"}),
    "t3backup_user_dir_bytes": ("gauge", {"user"}),
    # issue 10: start-up inventory in the background, the endpoint's own health
    "t3backup_inventory_pending": ("gauge", {"user"}),
    "t3backup_internal_errors_total": ("counter", {"component"}),
    "t3backup_metrics_bind_failures_total": ("counter", set()),
    "t3backup_metrics_connections_rejected_total": ("counter", set()),
    "t3backup_metrics_socket_activated": ("gauge", set()),
    # issue 22: the app's schema version in the newest snapshot (a series once known).
    "t3backup_schema_version": ("gauge", {"user"}),
    "t3backup_schema_backwards": ("gauge", {"user"}),
    "t3backup_schema_guards": ("gauge", {"user"}),
}
# Per-user series that exist only once their value is known.
WHEN_KNOWN = {"t3backup_schema_version"}
PER_USER = [
    name
    for name, (_, labels) in DESIGN_METRICS.items()
    if "user" in labels and name not in WHEN_KNOWN
]

ALICE = User("alice", 2001, 2001, "/home/alice")


def snapshot(name: str, time: float, size: int, label: str | None = None) -> SnapshotInfo:
    return SnapshotInfo(name=name, time=time, bytes=size, label=label)


OLD = snapshot("state-20250101T033000Z.sqlite", 1735702200.0, 1000)
NEWEST = snapshot("state-20250103T033000Z.sqlite", 1735875000.0, 3000)
MIDDLE = snapshot("state-20250102T033000Z--pre-upgrade.sqlite", 1735788600.0, 2000, "pre-upgrade")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    exported = Metrics(registry, version="9.9.9", sqlite_version="3.40.1")
    exported.set_verify_enabled(True)  # every series of the contract
    return exported


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def exposed_names(registry: CollectorRegistry) -> dict[str, str]:
    """`# TYPE` lines of the text exposition: name -> type."""
    types = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    return types


def test_exposition_has_exactly_the_design_names_and_types(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    assert exposed_names(registry) == {name: kind for name, (kind, _) in DESIGN_METRICS.items()}


def test_verify_series_are_not_exported_while_verification_is_off(
    registry: CollectorRegistry,
) -> None:
    """`[verify] cron` off: no per-user verify sample (a 0 timestamp read as "56 years
    ago"); the families stay declared, so the exposition's names do not change."""
    metrics = Metrics(registry)
    metrics.set_users(["alice"])
    assert value(registry, "t3backup_last_verify_timestamp_seconds", user="alice") is None
    assert value(registry, "t3backup_verify_failures_total", user="alice") is None
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == 0.0
    assert "t3backup_last_verify_timestamp_seconds" in exposed_names(registry)
    metrics.set_verify_enabled(True)
    assert value(registry, "t3backup_last_verify_timestamp_seconds", user="alice") == 0.0
    assert value(registry, "t3backup_verify_failures_total", user="alice") == 0.0


def test_counters_carry_no_created_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.set_users(["alice"])
    assert "_created" not in generate_latest(registry).decode()


def test_every_series_has_the_design_labels(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.set_users(["alice"])
    seen: set[str] = set()
    for family in registry.collect():
        for sample in family.samples:
            name = sample.name
            seen.add(name)
            assert set(sample.labels) == DESIGN_METRICS[name][1], name
    assert seen == set(DESIGN_METRICS) - WHEN_KNOWN


def test_new_users_are_exported_at_zero(registry: CollectorRegistry, metrics: Metrics) -> None:
    added, removed = metrics.set_users(["bob", "alice"])
    assert (added, removed) == (["alice", "bob"], [])
    for name in PER_USER:
        if name == "t3backup_failures_total":
            continue
        assert value(registry, name, user="alice") == 0.0, name
    for reason in FAILURE_REASONS:
        assert value(registry, "t3backup_failures_total", user="bob", reason=reason) == 0.0
    assert value(registry, "t3backup_users") == 2.0


def test_removed_user_loses_every_series_and_others_keep_theirs(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice", "bob"])
    metrics.restore("bob", [OLD])
    added, removed = metrics.set_users(["bob", "carol"])
    assert (added, removed) == (["carol"], ["alice"])
    text = generate_latest(registry).decode()
    assert 'user="alice"' not in text
    assert 'user="carol"' in text
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="bob") == OLD.time
    assert value(registry, "t3backup_users") == 2.0


def test_restore_takes_the_newest_snapshot_by_time_not_list_order(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.restore("alice", [NEWEST, OLD, MIDDLE])
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == NEWEST.time
    assert value(registry, "t3backup_last_snapshot_size_bytes", user="alice") == 3000.0
    assert value(registry, "t3backup_snapshots", user="alice") == 3.0


def test_restore_of_an_empty_directory_keeps_never_at_zero(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.restore("alice", [])
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == 0.0
    assert value(registry, "t3backup_snapshots", user="alice") == 0.0


def ok_result(started: float = 1735900000.0) -> UserResult:
    published = snapshot("state-20250103T103000Z.sqlite", 1735900200.0, 4096)
    report = Report(
        action="snapshot",
        status="ok",
        snapshot=published,
        source_bytes=5000,
        snapshots=(OLD, published),
    )
    return UserResult(ALICE, report, started, 1.5)


def test_successful_attempt_updates_success_size_count_and_duration(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.record_result(ok_result())
    assert value(registry, "t3backup_attempts_total", user="alice") == 1.0
    assert value(registry, "t3backup_last_attempt_timestamp_seconds", user="alice") == 1735900000.0
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == 1735900200.0
    assert value(registry, "t3backup_last_snapshot_size_bytes", user="alice") == 4096.0
    assert value(registry, "t3backup_source_size_bytes", user="alice") == 5000.0
    assert value(registry, "t3backup_snapshots", user="alice") == 2.0
    assert value(registry, "t3backup_snapshot_duration_seconds", user="alice") == 1.5


def test_failed_attempt_counts_its_reason_and_keeps_the_last_success(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.restore("alice", [OLD])
    result = UserResult(ALICE, failed("snapshot", "disk_space", "full"), 1735999999.0, 0.2)
    metrics.record_result(result)
    metrics.record_result(result)
    assert value(registry, "t3backup_failures_total", user="alice", reason="disk_space") == 2.0
    assert value(registry, "t3backup_failures_total", user="alice", reason="timeout") == 0.0
    assert value(registry, "t3backup_attempts_total", user="alice") == 2.0
    assert value(registry, "t3backup_last_attempt_timestamp_seconds", user="alice") == 1735999999.0
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == OLD.time
    assert value(registry, "t3backup_snapshots", user="alice") == 1.0


def test_result_for_a_user_removed_meanwhile_does_not_bring_them_back(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.set_users([])
    metrics.record_result(ok_result())
    metrics.record_verify("alice", 1, 1.0)
    assert 'user="alice"' not in generate_latest(registry).decode()


def test_record_verify_counts_failures_and_time(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.record_verify("alice", 2, 1736000000.0)
    metrics.record_verify("alice", 0, 1736000100.0)
    assert value(registry, "t3backup_verify_failures_total", user="alice") == 2.0
    assert value(registry, "t3backup_last_verify_timestamp_seconds", user="alice") == 1736000100.0


def test_reload_status_and_next_run(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.config_loaded(True, 100.0)
    metrics.set_next_run(200.0)
    assert value(registry, "t3backup_config_last_reload_successful") == 1.0
    metrics.config_loaded(False, 150.0)
    assert value(registry, "t3backup_config_last_reload_successful") == 0.0
    # The success timestamp keeps the last *successful* load, as in Prometheus.
    assert value(registry, "t3backup_config_last_reload_success_timestamp_seconds") == 100.0
    assert value(registry, "t3backup_next_run_timestamp_seconds") == 200.0
    metrics.set_next_run(None)
    assert value(registry, "t3backup_next_run_timestamp_seconds") == 0.0


def test_build_info_carries_versions(registry: CollectorRegistry, metrics: Metrics) -> None:
    labels = {"version": "9.9.9", "sqlite_version": "3.40.1"}
    assert value(registry, "t3backup_build_info", **labels) == 1.0


def test_two_instances_on_separate_registries_do_not_clash() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first).set_users(["alice"])
    Metrics(second)
    assert value(first, "t3backup_users") == 1.0
    assert value(second, "t3backup_users") == 0.0


def test_a_second_instance_on_the_same_registry_is_refused(registry: CollectorRegistry) -> None:
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)


def test_unchanged_state_reuses_the_built_families_and_any_update_rebuilds(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    first = list(metrics.collect())
    assert all(a is b for a, b in zip(first, metrics.collect(), strict=True))
    metrics.record_verify("alice", 2, 1_700_000_000.0)
    assert registry.get_sample_value("t3backup_verify_failures_total", {"user": "alice"}) == 2
    metrics.set_next_run(1_800_000_000.0)
    assert registry.get_sample_value("t3backup_next_run_timestamp_seconds") == 1_800_000_000.0
    metrics.config_loaded(False, 1.0)
    assert registry.get_sample_value("t3backup_config_last_reload_successful") == 0


def test_a_listing_older_than_a_pass_result_does_not_override_it(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    report = Report(action="snapshot", status="ok", snapshot=NEWEST, snapshots=(OLD, NEWEST))
    metrics.record_result(UserResult(ALICE, report, started=100.0, duration_s=5.0))
    # A background listing that began before that pass finished saw an older disk.
    metrics.restore("alice", [OLD], listed_at=104.0)
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == NEWEST.time
    assert value(registry, "t3backup_snapshots", user="alice") == 2
    # One that began later is the truth.
    metrics.restore("alice", [OLD], listed_at=106.0)
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == OLD.time
    assert value(registry, "t3backup_snapshots", user="alice") == 1


def test_pending_users_are_exported_and_listed(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice", "bob"])
    assert value(registry, "t3backup_inventory_pending", user="alice") == 0
    metrics.set_pending(["alice", "bob", "ghost"], True)
    metrics.set_pending(["bob"], False)
    assert value(registry, "t3backup_inventory_pending", user="alice") == 1
    assert value(registry, "t3backup_inventory_pending", user="bob") == 0
    assert metrics.pending() == ["alice"]


def test_summary_restore_and_known_round_trip(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.restore_summary("alice", 14, 1735875000.0, 3000)
    metrics.restore_summary("ghost", 1, 1.0, 1)  # not served: ignored
    assert metrics.known() == {"alice": (14, 1735875000.0, 3000)}
    assert value(registry, "t3backup_last_snapshot_size_bytes", user="alice") == 3000


def test_internal_errors_and_endpoint_events_are_counted(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.count_internal_error("main_loop")
    metrics.count_internal_error("main_loop")
    metrics.count_endpoint_event("bind_failed")
    metrics.count_endpoint_event("rejected")
    metrics.set_socket_activated(True)
    assert value(registry, "t3backup_internal_errors_total", component="main_loop") == 2
    assert value(registry, "t3backup_internal_errors_total", component="metrics_endpoint") == 0
    assert value(registry, "t3backup_metrics_bind_failures_total") == 1
    assert value(registry, "t3backup_metrics_connections_rejected_total") == 1
    assert value(registry, "t3backup_metrics_socket_activated") == 1


# A name dated 2099 in a user's own directory (planted, or a clock fault): issue 20 item 5.
PLANTED = snapshot("state-20990101T000000Z.sqlite", 4070908800.0, 7)


def test_a_future_dated_name_is_counted_but_never_the_newest(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.restore("alice", [OLD, PLANTED, NEWEST])
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == NEWEST.time
    assert value(registry, "t3backup_last_snapshot_size_bytes", user="alice") == NEWEST.bytes
    assert value(registry, "t3backup_snapshots", user="alice") == 3
    assert metrics.known()["alice"] == (3, NEWEST.time, NEWEST.bytes)
    metrics.restore("alice", [PLANTED])  # only a future-dated one: never succeeded
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == 0


def test_a_report_of_a_future_dated_snapshot_is_not_the_last_success(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    metrics.restore("alice", [NEWEST])
    report = Report(action="snapshot", status="ok", snapshot=PLANTED, snapshots=(NEWEST, PLANTED))
    metrics.record_result(UserResult(ALICE, report, started=100.0, duration_s=5.0))
    assert value(registry, "t3backup_last_success_timestamp_seconds", user="alice") == NEWEST.time


def test_schema_version_is_exported_once_a_snapshot_reports_it(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    """No series while unknown (0 is a real user_version); the newest snapshot's version
    after a pass; a later snapshot that cannot tell keeps the last known one."""
    metrics.set_users(["alice"])
    assert value(registry, "t3backup_schema_version", user="alice") is None
    base = ok_result()
    assert base.report.snapshot is not None
    with_version = replace(base.report.snapshot, schema_version=26)
    metrics.record_result(replace(base, report=replace(base.report, snapshot=with_version)))
    assert value(registry, "t3backup_schema_version", user="alice") == 26.0
    metrics.record_result(ok_result(started=1735900300.0))
    assert value(registry, "t3backup_schema_version", user="alice") == 26.0


def test_schema_backwards_follows_root_s_hold_on_each_snapshot_result(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    assert value(registry, "t3backup_schema_backwards", user="alice") == 0.0
    base = ok_result()
    held = replace(base, report=replace(base.report, extra={SCHEMA_HOLD: "27"}))
    metrics.record_result(held)
    assert value(registry, "t3backup_schema_backwards", user="alice") == 1.0
    metrics.record_result(ok_result(started=1735900300.0))  # acknowledged: no hold
    assert value(registry, "t3backup_schema_backwards", user="alice") == 0.0


def test_schema_guards_counts_the_guards_in_the_user_s_listing(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    base = ok_result()
    guard = SnapshotInfo("state-20250101T000000Z--schema-26.sqlite", 1735689600.0, 10, "schema-26")
    own = SnapshotInfo("state-20250102T000000Z--pre-0.0.26.sqlite", 1735776000.0, 10, "pre-0.0.26")
    listing = (*base.report.snapshots, guard, own)
    metrics.record_result(replace(base, report=replace(base.report, snapshots=listing)))
    assert value(registry, "t3backup_schema_guards", user="alice") == 1.0
