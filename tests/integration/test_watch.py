"""A snapshot the CLI takes while the daemon runs reaches the daemon's metrics by itself
(root/watch.py): the real daemon, the real CLI, real scrapes, no signal sent by hand."""

from __future__ import annotations

import time

from support.daemon import Site, cli_snapshot, daemon, sample, scrape, snapshot_times

from t3backupd.root.watch import WATCH_INTERVAL_SECONDS, entry_stamp

DEADLINE_SECONDS = 60.0  # the promise in docs/design.md and docs/operations.md


def test_cli_snapshot_while_the_daemon_runs_shows_in_metrics_within_a_minute(site: Site) -> None:
    user, other = site.add_user(), site.add_user()
    site.write([user, other])
    cli_snapshot(site)
    first = snapshot_times(site, user)[-1][1]
    with daemon(site) as running:
        assert sample(scrape(site.port), "t3backup_last_success_timestamp_seconds",
                      user=user.name) == first  # fmt: skip
        time.sleep(1.1)  # snapshot names have one-second resolution
        taken = time.monotonic()
        cli_snapshot(site)
        newest = snapshot_times(site, user)[-1][1]
        assert newest > first
        seen = None
        while time.monotonic() - taken < DEADLINE_SECONDS:
            text = scrape(site.port)
            seen = sample(text, "t3backup_last_success_timestamp_seconds", user=user.name)
            if seen == newest:
                break
            time.sleep(0.5)
        waited = time.monotonic() - taken
        assert seen == newest, f"metric still {seen}, snapshot {newest}; {running.log_text()}"
        assert sample(text, "t3backup_snapshots", user=user.name) == 2
        # The daemon took no snapshot itself: the attempt counter is untouched.
        assert sample(text, "t3backup_attempts_total", user=user.name) == 0
        assert waited < WATCH_INTERVAL_SECONDS * 2 + 10
    log = running.log_text()
    assert "snapshots changed on disk; listing" in log


def test_entry_stamp_never_follows_a_link(site: Site) -> None:
    site.dest.mkdir()
    (site.root / "elsewhere").mkdir()
    (site.dest / "alice").symlink_to(site.root / "elsewhere")
    stamp = entry_stamp(str(site.dest), "alice")
    link = (site.dest / "alice").lstat()
    assert stamp == (link.st_ino, link.st_mtime_ns, link.st_ctime_ns)
    assert entry_stamp(str(site.dest), "nobody-here") is None
    (site.root / "destlink").symlink_to(site.dest)
    assert entry_stamp(str(site.root / "destlink"), "alice") is None
