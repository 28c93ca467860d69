"""Metrics: DESIGN's names, types and labels; restore from disk; user set changes; serving."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support import need

from t3backupd.core.protocol import FAILURE_REASONS, Report, SnapshotInfo, UserResult, failed
from t3backupd.core.usermap import User
from t3backupd.root.metrics import Metrics, serve

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
    "t3backup_config_last_reload_successful": ("gauge", set()),
    "t3backup_config_last_reload_success_timestamp_seconds": ("gauge", set()),
    "t3backup_build_info": ("gauge", {"version", "sqlite_version"}),
    "t3backup_verify_failures_total": ("counter", {"user"}),
    "t3backup_last_verify_timestamp_seconds": ("gauge", {"user"}),
    # issue 10: a user skipped because their worker outlived SIGKILL unreaped.
    "t3backup_worker_stuck": ("gauge", {"user"}),
    "t3backup_user_dir_bytes": ("gauge", {"user"}),
}
PER_USER = [name for name, (_, labels) in DESIGN_METRICS.items() if "user" in labels]

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
    assert seen == set(DESIGN_METRICS)


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


# --- serving ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_answers_scrapes_and_stop_releases_the_port(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_users(["alice"])
    port = free_port()
    server = serve(registry, f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert "t3backup_users 1.0" in body
    finally:
        server.stop()
    # The port can be served again at once (what a reload that restarts it relies on).
    serve(registry, f"127.0.0.1:{port}").stop()


def test_serve_refuses_a_port_in_use(registry: CollectorRegistry) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            serve(registry, f"127.0.0.1:{holder.getsockname()[1]}")


@pytest.fixture
def certificate(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    need(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    yield cert, key


def test_serve_over_tls_when_cert_and_key_are_given(
    registry: CollectorRegistry, metrics: Metrics, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    port = free_port()
    server = serve(registry, f"127.0.0.1:{port}", str(cert), str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        url = f"https://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            assert b"t3backup_build_info" in response.read()
        with pytest.raises(OSError):  # plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.stop()


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
