"""`t3backupd run` end to end: the real daemon as a subprocess, a real NOTIFY_SOCKET the
test owns, real scrapes of /metrics, real signals, real users and workers (as root, as in
CI; as the invoking user otherwise, where tests needing several users skip)."""

from __future__ import annotations

import itertools
import json
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support import need
from support.daemon import (
    FAR_FUTURE_CRON,
    START_TIMEOUT,
    STOP_GRACE,
    Running,
    Site,
    cli_snapshot,
    daemon,
    frozen_processes_of,
    last_pass_ok,
    sample,
    scrape,
    snapshot_times,
)
from support.offsite import Backend, need_restic, offsite_section, password_file
from support.snapshots import flip_byte
from support.system import (
    IS_ROOT,
    PYTHON,
    run_as,
    sha256sum_check,
    snapshot_files,
)

from t3backupd.core.usermap import User

# DESIGN.md, section Metrics (+ the verify feature's two series): name -> TYPE.
DESIGN_TYPES = {
    "t3backup_last_success_timestamp_seconds": "gauge",
    "t3backup_last_attempt_timestamp_seconds": "gauge",
    "t3backup_last_snapshot_size_bytes": "gauge",
    "t3backup_source_size_bytes": "gauge",
    "t3backup_snapshots": "gauge",
    "t3backup_snapshot_duration_seconds": "gauge",
    "t3backup_attempts_total": "counter",
    "t3backup_failures_total": "counter",
    "t3backup_users": "gauge",
    "t3backup_next_run_timestamp_seconds": "gauge",
    "t3backup_schedule_interval_seconds": "gauge",  # issue 14: the staleness threshold
    "t3backup_config_last_reload_successful": "gauge",
    "t3backup_config_last_reload_success_timestamp_seconds": "gauge",
    "t3backup_build_info": "gauge",
    "t3backup_verify_failures_total": "counter",
    "t3backup_last_verify_timestamp_seconds": "gauge",
    "t3backup_worker_stuck": "gauge",  # issue 10
    "t3backup_schema_backwards": "gauge",  # issue 22
    "t3backup_schema_guards": "gauge",  # issue 22
    "t3backup_user_dir_bytes": "gauge",
    "t3backup_destination_free_bytes": "gauge",
    "t3backup_destination_size_bytes": "gauge",
    "t3backup_inventory_pending": "gauge",
    "t3backup_internal_errors_total": "counter",
    "t3backup_metrics_bind_failures_total": "counter",
    "t3backup_metrics_connections_rejected_total": "counter",
    "t3backup_metrics_socket_activated": "gauge",
    "t3backup_schema_version": "gauge",  # issue 22
}


def test_ready_is_sent_only_once_metrics_answer_with_a_status_line(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    with daemon(site, wait_ready=False) as running:
        index = running.notify.wait_field("READY", "1", timeout=START_TIMEOUT)
        ready = running.notify.messages[index]
        assert ready.scrape_ok is True, "READY=1 was sent before /metrics answered"
        status = ready.fields.get("STATUS", "")
        assert "1 user(s)" in status
        assert "next pass 2028-02-29" in status
        # READY is not sent twice at start (a reload sends the next one).
        time.sleep(0.3)
        assert sum(m.fields.get("READY") == "1" for m in running.notify.messages) == 1


def test_scrape_has_every_design_metric_and_values_restored_from_disk(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    cli_snapshot(site)
    time.sleep(1.05)  # the next snapshot gets a later name (whole seconds)
    cli_snapshot(site)
    on_disk = snapshot_times(site, user)
    assert len(on_disk) == 2
    newest_name, newest_time = on_disk[-1]
    newest_size = (site.dest / user.name / newest_name).stat().st_size
    with daemon(site):
        text = scrape(site.port)
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    # The parser drops counters' _total from family names; the TYPE lines keep it.
    type_lines = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert type_lines == DESIGN_TYPES
    assert len(types) == len(DESIGN_TYPES)
    name = user.name
    assert sample(text, "t3backup_last_success_timestamp_seconds", user=name) == newest_time
    assert sample(text, "t3backup_last_snapshot_size_bytes", user=name) == newest_size
    assert sample(text, "t3backup_snapshots", user=name) == 2
    assert sample(text, "t3backup_users") == 1
    # No pass ran (catch_up off, schedule far away): the values came from disk.
    assert sample(text, "t3backup_attempts_total", user=name) == 0
    assert sample(text, "t3backup_config_last_reload_successful") == 1
    assert sample(text, "t3backup_next_run_timestamp_seconds") == 1835395200.0  # 2028-02-29
    # Rarer than yearly: the 400-day horizon.
    assert sample(text, "t3backup_schedule_interval_seconds") == 400 * 86400
    assert sample(text, "t3backup_failures_total", user=name, reason="timeout") == 0


def test_promtool_check_metrics_on_a_real_scrape_is_clean(site: Site) -> None:
    need(shutil.which("promtool") is not None, "needs promtool (Debian package prometheus)")
    user = site.add_user()
    site.write([user], catch_up=True)
    with daemon(site) as running:
        running.notify.wait_for(last_pass_ok(1))  # series with real values, not just zeros
        text = scrape(site.port)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_catch_up_runs_a_pass_at_start_when_the_last_scheduled_run_was_missed(
    site: Site,
) -> None:
    user = site.add_user()
    site.write([user], catch_up=True)  # last leap day 2024-02-29 is after "never"
    with daemon(site) as running:
        running.notify.wait_for(last_pass_ok(1))
        text = scrape(site.port)
    assert len(snapshot_times(site, user)) == 1
    assert sample(text, "t3backup_attempts_total", user=user.name) == 1
    assert (
        sample(text, "t3backup_last_success_timestamp_seconds", user=user.name)
        == (snapshot_times(site, user)[0][1])
    )


# --- reload ---------------------------------------------------------------------------------


def test_sighup_reloads_the_usermap_adding_and_removing_users(site: Site) -> None:
    need(IS_ROOT, "needs root: three real users")
    kept, removed = site.add_user(), site.add_user()
    site.write([kept, removed])
    cli_snapshot(site)
    removed_snapshots = snapshot_times(site, removed)
    assert removed_snapshots
    added = site.add_user()
    with daemon(site) as running:
        before = scrape(site.port)
        assert sample(before, "t3backup_snapshots", user=removed.name) == 1
        site.write([kept, added])
        mark = len(running.notify.messages)
        running.signal(signal.SIGHUP)
        reloading = running.notify.wait_field("RELOADING", "1", after=mark)
        assert running.notify.messages[reloading].fields["MONOTONIC_USEC"].isdigit()
        ready = running.notify.wait_field("READY", "1", after=reloading)
        status = running.notify.messages[ready].fields["STATUS"]
        assert f"users added: {added.name}" in status
        assert f"users removed: {removed.name}" in status
        text = scrape(site.port)
    assert f'user="{removed.name}"' not in text
    assert sample(text, "t3backup_last_success_timestamp_seconds", user=added.name) == 0
    assert sample(text, "t3backup_attempts_total", user=added.name) == 0
    assert (
        sample(text, "t3backup_last_success_timestamp_seconds", user=kept.name)
        == (snapshot_times(site, kept)[-1][1])
    )
    assert sample(text, "t3backup_users") == 2
    assert snapshot_times(site, removed) == removed_snapshots  # never deleted for that reason


def test_invalid_config_on_sighup_keeps_the_old_one_and_says_why(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    with daemon(site) as running:
        first = scrape(site.port)
        loaded_at = sample(first, "t3backup_config_last_reload_success_timestamp_seconds")
        site.config.write_text(site.config.read_text().replace(FAR_FUTURE_CRON, "0 3 * * 8"))
        mark = len(running.notify.messages)
        running.signal(signal.SIGHUP)
        ready = running.notify.wait_field(
            "READY", "1", after=running.notify.wait_field("RELOADING", "1", after=mark)
        )
        status = running.notify.messages[ready].fields["STATUS"]
        assert "reload refused" in status and "schedule.cron" in status
        refused = scrape(site.port)  # same endpoint: the old config still runs
        assert sample(refused, "t3backup_config_last_reload_successful") == 0
        assert sample(refused, "t3backup_config_last_reload_success_timestamp_seconds") == loaded_at
        assert sample(refused, "t3backup_next_run_timestamp_seconds") == 1835395200.0
        assert sample(refused, "t3backup_users") == 1

        site.write([user], cron="0 0 1 1 *")
        mark = len(running.notify.messages)
        running.signal(signal.SIGHUP)
        ready = running.notify.wait_field(
            "READY", "1", after=running.notify.wait_field("RELOADING", "1", after=mark)
        )
        assert "schedule now '0 0 1 1 *'" in running.notify.messages[ready].fields["STATUS"]
        fixed = scrape(site.port)
    assert sample(fixed, "t3backup_config_last_reload_successful") == 1
    success_time = sample(fixed, "t3backup_config_last_reload_success_timestamp_seconds")
    assert loaded_at is not None and success_time is not None and success_time > loaded_at
    next_run = sample(fixed, "t3backup_next_run_timestamp_seconds")
    assert next_run is not None and next_run < 1835395200.0  # rescheduled to a Jan 1st
    assert time.gmtime(next_run)[1:3] == (1, 1)
    # The staleness threshold follows the schedule: yearly now.
    assert sample(fixed, "t3backup_schedule_interval_seconds") == 365 * 86400


def reload(running: Running) -> str:
    """SIGHUP, then the STATUS of the READY=1 that ends the reload."""
    mark = len(running.notify.messages)
    running.signal(signal.SIGHUP)
    reloading = running.notify.wait_field("RELOADING", "1", after=mark)
    ready = running.notify.wait_field("READY", "1", after=reloading, timeout=5)
    return running.notify.messages[ready].fields["STATUS"]


def wait_sample(port: int, name: str, value: float, timeout: float = 15, **labels: str) -> str:
    """Scrape until `name{labels}` is `value`; the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(port)
        if sample(text, name, **labels) == value or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_reload_never_waits_for_a_stuck_inventory_worker(site: Site) -> None:
    """A user SIGSTOPs the worker listing their snapshots after a reload added them: the
    main thread still pings the watchdog, finishes the reload and stops at once."""
    need(IS_ROOT, "needs root: two real users, one of them frozen")
    kept, added = site.add_user(), site.add_user()
    site.write([kept, added])
    cli_snapshot(site)  # <dest>/<added> exists: the reload spawns a worker to list it
    site.write([kept])
    with (
        daemon(site, watchdog_usec=2_000_000) as running,
        frozen_processes_of(added.uid) as stopped,
    ):
        for _attempt in range(3):
            site.write([kept, added])
            reload_sent = time.monotonic()
            status = reload(running)  # READY=1 within 5 s, not after the worker's timeout
            assert f"users added: {added.name}" in status
            assert time.monotonic() - reload_sent < 5
            text = scrape(site.port)
            assert sample(text, "t3backup_users") == 2
            # The inventory runs in the background: give the freezer time to catch it.
            deadline = time.monotonic() + 5
            while not stopped and time.monotonic() < deadline:
                time.sleep(0.05)
            if stopped:
                break
            # The worker finished before it could be frozen (~0.1 s): go round again.
            site.write([kept])
            reload(running)
        assert stopped, "the inventory worker never appeared"
        pings_before = len([m for m in running.notify.messages if m.fields.get("WATCHDOG")])
        time.sleep(2.5)
        pings = [m for m in running.notify.messages if m.fields.get("WATCHDOG")]
        assert len(pings) - pings_before >= 2, "watchdog pings stalled behind the inventory"
        stop_sent = time.monotonic()
        running.signal(signal.SIGTERM)
        status_code = running.process.wait(STOP_GRACE + 5)
        assert status_code == 0, running.log_text()
        assert time.monotonic() - stop_sent < 5, "SIGTERM waited for the stuck inventory"


def test_reload_moving_dest_restores_every_users_metrics_from_the_new_dest(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    cli_snapshot(site)
    (_, taken), *_ = snapshot_times(site, user)
    elsewhere = site.root / "elsewhere"
    configured = f'dest = "{site.dest}"'
    text = site.config.read_text()
    assert configured in text
    site.config.write_text(text.replace(configured, f'dest = "{elsewhere}"'))
    with daemon(site) as running:
        before = scrape(site.port)
        assert sample(before, "t3backup_snapshots", user=user.name) == 0
        assert sample(before, "t3backup_last_success_timestamp_seconds", user=user.name) == 0
        site.config.write_text(text)  # back to the dest holding the snapshot
        status = reload(running)
        assert "changed: dest" in status
        after = wait_sample(site.port, "t3backup_snapshots", 1, user=user.name)
    assert sample(after, "t3backup_snapshots", user=user.name) == 1
    assert sample(after, "t3backup_last_success_timestamp_seconds", user=user.name) == taken


def test_a_reload_changing_only_offsite_names_its_keys_never_their_values(site: Site) -> None:
    """Before: "no changes". The repository may carry a credential, so no value is shown
    (here a token in the path stands for it)."""
    need_restic()
    user = site.add_user()
    secret = "tok" + secrets.token_hex(6)
    password, cache = password_file(site.root), site.root / "cache"
    old = Backend("local", str(site.root / f"repo-{secret}"))
    site.write([user], extra=offsite_section(old, password, cache, keep_daily=7))
    with daemon(site) as running:
        moved = Backend("local", str(site.root / f"repo-{secret}-moved"))
        site.write([user], extra=offsite_section(moved, password, cache, keep_daily=14))
        status = reload(running)
        [event] = running.events("reloaded")
    assert event["changes"] == "changed: offsite.repository, offsite.keep_daily"
    assert "changed: offsite.repository, offsite.keep_daily" in status
    assert secret not in str(event) and secret not in status and "14" not in str(event)


def test_missing_usermap_at_start_is_one_line_and_exit_2_before_serving(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    (site.root / "usermap").unlink()
    with daemon(site, wait_ready=False) as running:
        assert running.process.wait(START_TIMEOUT) == 2, running.log_text()
    lines = running.log_text().strip().splitlines()
    assert lines == [
        f"t3backupd: {site.root / 'usermap'}: usermap unreadable: No such file or directory"
    ]
    assert running.notify.messages == []  # never READY, never a STATUS
    with socket.socket() as probe:  # the metrics port was never bound
        probe.bind(("127.0.0.1", site.port))


def test_usermap_serving_nobody_at_start_is_zero_users_and_one_warning(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    usermap = site.root / "usermap"
    kept = usermap.read_text()
    usermap.write_text("# nobody yet\n")
    with daemon(site) as running:
        text = scrape(site.port)
        assert sample(text, "t3backup_users") == 0  # T3BackupNoUsers fires on this
        assert sample(text, "t3backup_config_last_reload_successful") == 1
        events = [json.loads(line) for line in running.log_text().splitlines()
                  if line.startswith("{")]  # fmt: skip
        warnings = [e for e in events if e["event"] == "usermap serves no user"]
        assert [e["level"] for e in warnings] == ["warning"]
        usermap.write_text(kept)  # the operator fixes it and reloads
        assert f"users added: {user.name}" in reload(running)
        fixed = scrape(site.port)
    assert sample(fixed, "t3backup_users") == 1
    assert sample(fixed, "t3backup_snapshots", user=user.name) == 0


def test_usermap_unreadable_on_reload_keeps_the_old_users_and_says_why(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    usermap = site.root / "usermap"
    with daemon(site) as running:
        usermap.unlink()
        status = reload(running)
        assert "reload refused" in status and "usermap unreadable" in status
        text = scrape(site.port)
        assert sample(text, "t3backup_config_last_reload_successful") == 0
        assert sample(text, "t3backup_users") == 1
        assert f'user="{user.name}"' in text
        assert running.process.poll() is None


# --- SIGUSR1, SIGTERM ----------------------------------------------------------------------


def test_sigusr1_runs_a_pass_and_last_success_advances(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    cli_snapshot(site)
    earlier = snapshot_times(site, user)[-1][1]
    with daemon(site) as running:
        before = scrape(site.port)
        assert sample(before, "t3backup_last_success_timestamp_seconds", user=user.name) == earlier
        mark = len(running.notify.messages)
        running.signal(signal.SIGUSR1)
        running.notify.wait_for(last_pass_ok(1), after=mark)
        after = scrape(site.port)
    advanced = sample(after, "t3backup_last_success_timestamp_seconds", user=user.name)
    assert advanced is not None and advanced > earlier
    assert advanced == snapshot_times(site, user)[-1][1]
    assert sample(after, "t3backup_attempts_total", user=user.name) == 1
    assert sample(after, "t3backup_snapshots", user=user.name) == 2


def test_sigterm_during_a_slow_snapshot_stops_cleanly(site: Site) -> None:
    user = site.add_user(size_mb=1)
    site.write([user], snapshot='[snapshot]\nmethod = "vacuum"\nverify = "full"\n')
    cli_snapshot(site)  # an earlier snapshot that must survive
    earlier = snapshot_files(site.dest / user.name)
    make_database_large(site, user)
    user_dir = site.dest / user.name
    with daemon(site) as running:
        running.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while not any(path.name.startswith(".t3backupd-") for path in user_dir.iterdir()):
            assert time.monotonic() < deadline, "the snapshot never started"
            time.sleep(0.005)
        mark = len(running.notify.messages)
        stop_sent = time.monotonic()
        running.signal(signal.SIGTERM)
        status = running.process.wait(STOP_GRACE + 5)
        stopped_in = time.monotonic() - stop_sent
        running.notify.wait_field("STOPPING", "1", after=mark, timeout=2)
    assert status == 0, running.log_text()
    assert stopped_in < STOP_GRACE
    leftovers = [path.name for path in user_dir.iterdir() if path.name.startswith(".t3backupd-")]
    assert leftovers == []
    assert snapshot_files(user_dir) == earlier  # interrupted: nothing half-published
    for name in earlier:
        check = sha256sum_check(user, user_dir, name)
        assert check.returncode == 0, check.stdout + check.stderr


def make_database_large(site: Site, user: User) -> None:
    """Replace the user's DB with one large enough that a snapshot takes a while."""
    path = Path(site.source.format(user=user.name, home=user.home))
    run_as(user, [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "create", str(path),
                  "--size-mb", "200", "--force"])  # fmt: skip


# --- watchdog ----------------------------------------------------------------------------


def watchdog_pings(running: Running, seconds: float) -> list[float]:
    time.sleep(seconds)
    return [m.at for m in running.notify.messages if m.fields.get("WATCHDOG") == "1"]


def test_watchdog_pings_arrive_at_half_the_interval(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    with daemon(site, watchdog_usec=2_000_000) as running:
        pings = watchdog_pings(running, 3.6)
    assert len(pings) >= 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert all(0.7 <= gap <= 1.3 for gap in gaps), gaps


def test_watchdog_meant_for_another_pid_is_not_pinged(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    with daemon(site, watchdog_usec=1_000_000, watchdog_pid="1") as running:
        assert watchdog_pings(running, 1.5) == []


def test_scheduled_verification_counts_a_corrupted_snapshot(site: Site) -> None:
    """`[verify] cron` runs verification in the daemon; a flipped byte is counted."""
    user = site.add_user()
    site.write([user])
    cli_snapshot(site)
    (name, _), *_ = snapshot_times(site, user)
    snapshot = site.dest / user.name / name
    flip_byte(snapshot, snapshot.stat().st_size // 2)
    site.write([user], extra='[verify]\ncron = "* * * * *"\n')
    with daemon(site):
        text = scrape(site.port)
        assert sample(text, "t3backup_last_verify_timestamp_seconds", user=user.name) == 0
        deadline = time.monotonic() + 75  # the next minute boundary, plus the check
        while time.monotonic() < deadline:
            text = scrape(site.port)
            if sample(text, "t3backup_last_verify_timestamp_seconds", user=user.name):
                break
            time.sleep(0.5)
    assert sample(text, "t3backup_last_verify_timestamp_seconds", user=user.name)
    assert sample(text, "t3backup_verify_failures_total", user=user.name) == 1


def test_a_verify_cron_equal_to_the_schedule_is_a_warning_in_check_config_and_the_daemon(
    site: Site,
) -> None:
    """Both jobs fire together, the snapshot pass wins the pass lock, and every verify
    pass is skipped: said at warning level, not only at info when each is skipped."""
    user = site.add_user()
    site.write([user], extra=f'[verify]\ncron = "{FAR_FUTURE_CRON}"\n')
    check = subprocess.run(
        [PYTHON, "-I", "-m", "t3backupd", "-c", str(site.config), "check-config", "--strict"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"warning: verify.cron '{FAR_FUTURE_CRON}' is schedule.cron" in check.stdout
    with daemon(site) as running:
        warned = running.events("verify passes will be skipped", level="warning")
        assert len(warned) == 1 and "is schedule.cron" in str(warned[0]["detail"]), warned
        site.write([user], extra='[verify]\ncron = "30 0 29 2 *"\n')  # leap days, not equal
        reload(running)
        assert len(running.events("verify passes will be skipped")) == 1
        # A reload moving schedule.cron onto the verify cron warns again.
        site.write([user], cron="30 0 29 2 *", extra='[verify]\ncron = "30 0 29 2 *"\n')
        reload(running)
        assert len(running.events("verify passes will be skipped", level="warning")) == 2
