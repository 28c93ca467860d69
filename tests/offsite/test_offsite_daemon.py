"""The daemon's offsite lane, with the real daemon as a subprocess and S3 on loopback
(`rclone serve s3`): uploads after each user's snapshot, metrics restored from the
repository at start, the bucket going away (failure counted, local snapshot intact) and
coming back (backfill by the next pass)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import Running, Site, daemon, sample, scrape, snapshot_times
from support.offsite import Backend, need_restic, offsite_section, password_file
from support.offsite import s3_backend as start_s3
from support.system import t3backupd

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def s3(sandbox: Path) -> Iterator[Backend]:
    need_restic()
    with start_s3(sandbox) as backend:
        yield backend


def offsite_events(running: Running, user: str) -> list[dict[str, object]]:
    return running.events("offsite", user=user)


def wait_offsite(running: Running, user: str, count: int, timeout: float = 120) -> dict:
    return running.wait_offsite(user, count, timeout)


def test_daemon_uploads_after_each_snapshot_and_heals_after_an_outage(
    site: Site, s3: Backend
) -> None:
    users = [site.add_user(), site.add_user()]
    password = password_file(site.root)
    env_file = s3.env_file(site.root)
    extra = offsite_section(s3, password, site.root / "cache", env_file, timeout_seconds=60)
    config = site.write(users, extra=extra)
    init = t3backupd(config, "offsite", "init")
    assert init.returncode == 0, init.stderr
    with daemon(site) as running:
        running.signal(signal.SIGUSR1)
        for user in users:
            event = wait_offsite(running, user.name, 1)
            assert event["status"] == "ok", event
            assert len(event["uploaded"]) == 1  # type: ignore[arg-type]
        text = scrape(site.port)
        for user in users:
            newest = snapshot_times(site, user)[-1][1]
            labels = {"user": user.name}
            assert sample(text, "t3backup_offsite_snapshots", **labels) == 1
            assert sample(text, "t3backup_offsite_last_success_timestamp_seconds", **labels) == (
                newest
            )
            assert sample(text, "t3backup_offsite_bytes_added_total", **labels) > 0
        # The bucket goes away: the next pass snapshots locally, the upload fails.
        s3.stop()
        time.sleep(1.1)
        running.signal(signal.SIGUSR1)
        for user in users:
            event = wait_offsite(running, user.name, 2)
            assert event["status"] == "failed" and event["reason"] == "unreachable", event
            assert len(snapshot_times(site, user)) == 2  # the local snapshot is intact
        text = scrape(site.port)
        for user in users:
            failures = sample(
                text, "t3backup_offsite_failures_total", user=user.name, reason="unreachable"
            )
            assert failures is not None and failures >= 1
            assert (
                sample(text, "t3backup_last_success_timestamp_seconds", user=user.name)
                == (snapshot_times(site, user)[-1][1])
            )
        # Back again: the next pass uploads both local snapshots it missed (backfill).
        s3.start()
        time.sleep(1.1)
        running.signal(signal.SIGUSR1)
        for user in users:
            event = wait_offsite(running, user.name, 3)
            assert event["status"] == "ok", event
            assert len(event["uploaded"]) == 2, event  # type: ignore[arg-type]
    # A fresh daemon restores the offsite metrics from the repository.
    with daemon(site) as running:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = scrape(site.port)
            if sample(text, "t3backup_offsite_snapshots", user=users[0].name) == 3:
                break
            time.sleep(0.2)
        for user in users:
            assert sample(text, "t3backup_offsite_snapshots", user=user.name) == 3
            assert (
                sample(text, "t3backup_offsite_last_success_timestamp_seconds", user=user.name)
                == (snapshot_times(site, user)[-1][1])
            )


def test_daemon_stopped_mid_upload_stops_in_its_grace_leaving_nothing_partial(
    site: Site, s3: Backend
) -> None:
    from support.daemon import start_daemon
    from support.offsite import restic, restic_pids, restic_snapshots

    user = site.add_user(size_mb=12)
    password = password_file(site.root)
    env_file = s3.env_file(site.root)
    extra = offsite_section(s3, password, site.root / "cache", env_file, limit_upload_kib=512)
    config = site.write([user], extra=extra)
    assert t3backupd(config, "offsite", "init").returncode == 0
    with start_daemon(config, site.port, site.root) as running:
        running.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not restic_pids(s3.repository):
            assert time.monotonic() < deadline, running.log_text()[-2000:]
            time.sleep(0.05)
        time.sleep(1.0)
        clock = time.monotonic()
        running.signal(signal.SIGTERM)
        running.process.wait(60)
        stopped_in = time.monotonic() - clock
        assert running.process.returncode == 0, running.log_text()[-2000:]
    assert stopped_in < 30
    assert restic_pids(s3.repository) == []
    assert restic_snapshots(s3, password) == []
    # No restic runs now: a lock still listed is stale (a listing that just exited, whose
    # removal the S3 server has not shown yet, or a SIGKILLed upload), as each pass
    # would find it; `unlock` removes only such locks.
    restic(s3, password, "unlock")
    checked = restic(s3, password, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_reload_that_adds_offsite_starts_the_lane(site: Site, local_backend: Backend) -> None:
    # docs/operations.md: [offsite] in the config, `offsite init`, `systemctl reload`.
    user = site.add_user()
    site.write([user])
    with daemon(site) as running:
        password = password_file(site.root)
        extra = offsite_section(local_backend, password, site.root / "cache", None)
        config = site.write([user], extra=extra)
        assert t3backupd(config, "offsite", "init").returncode == 0
        running.signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while '"reloaded"' not in running.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        running.signal(signal.SIGUSR1)
        event = wait_offsite(running, user.name, 1)
        assert event["status"] == "ok" and len(event["uploaded"]) == 1, event  # type: ignore[arg-type]
        newest = snapshot_times(site, user)[-1][1]
        text = scrape(site.port)
        assert sample(text, "t3backup_offsite_last_success_timestamp_seconds", user=user.name) == (
            newest
        )
