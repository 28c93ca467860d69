"""Issue 21 item 2: every `offsite check`, the CLI's too, is recorded in root's check
record, and the real daemon serves it: after a start (from its first scrape) and while it
runs (without a restart), so running `t3backupd offsite check` as the alerts say clears
them. All real: a restic repository on a local path, the CLI and the daemon as
subprocesses, the daemon's metrics scraped over HTTP."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from support.daemon import Running, Site, daemon, sample, scrape, snapshot_times
from support.offsite import Backend, offsite_section, password_file
from support.system import t3backupd

pytestmark = [pytest.mark.root, pytest.mark.slow]

RECORD = "t3backupd-last-check"
LAST_CHECK = "t3backup_offsite_last_check_timestamp_seconds"
LAST_FAILURE = "t3backup_offsite_last_check_failure_timestamp_seconds"
FAILURES = "t3backup_offsite_check_failures_total"
OLDEST = "t3backup_offsite_oldest_copy_timestamp_seconds"


def offsite_site(
    site: Site, backend: Backend, upload: bool = True, check_cron: str = "45 5 * * 0"
) -> tuple[Path, Path]:
    """`site` with one user and [offsite] on `backend`, initialised (and with one copy
    uploaded); returns the config and the password file."""
    user = site.add_user()
    password = password_file(site.root)
    extra = offsite_section(backend, password, site.root / "cache", None, check_cron=check_cron)
    config = site.write([user], extra=extra)
    for command in (["offsite", "init"], ["snapshot"], ["offsite", "sync"])[: 3 if upload else 1]:
        result = t3backupd(config, *command)
        assert result.returncode == 0, result.stdout + result.stderr
    return config, password


def check(config: Path, expect: int = 0) -> None:
    result = t3backupd(config, "offsite", "check")
    assert result.returncode == expect, result.stdout + result.stderr


def wait_sample(site: Site, name: str, wanted: float, timeout: float = 30) -> str:
    """A scrape once `name` is `wanted` (the last scrape after `timeout`)."""
    deadline = time.monotonic() + timeout
    text = scrape(site.port)
    while sample(text, name) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        text = scrape(site.port)
    return text


def wait_restored(running: Running, timeout: float = 60) -> None:
    """Until the daemon's start-up listing of the repository has ended: `restic check`
    needs the repository's exclusive lock, which a listing holds off."""
    deadline = time.monotonic() + timeout
    while not running.events("offsite metrics restored"):
        assert time.monotonic() < deadline, running.log_text()[-2000:]
        time.sleep(0.2)


def test_a_cli_check_is_recorded_and_served_from_the_first_scrape_of_a_later_daemon(
    site: Site, local_backend: Backend
) -> None:
    config, _ = offsite_site(site, local_backend)
    before = time.time()
    check(config)
    path = site.root / "cache" / RECORD
    record = json.loads(path.read_text())
    assert record["last_ok"] is True and record["failures"] == 0
    assert before <= record["last_passed"] == record["last_check"] <= time.time()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with daemon(site) as running:
        text = scrape(site.port)
        assert sample(text, LAST_CHECK) == record["last_passed"]
        assert sample(text, LAST_FAILURE) == 0
        assert sample(text, FAILURES) == 0
        # The oldest copy comes from the repository's listing, in the background.
        newest = snapshot_times(site, site.users[0])[-1][1]
        assert sample(wait_sample(site, OLDEST, newest), OLDEST) == newest
        assert running.events("offsite check record ignored") == []


def test_a_cli_check_while_the_daemon_runs_reaches_its_metrics_without_a_restart(
    site: Site, local_backend: Backend
) -> None:
    config, password = offsite_site(site, local_backend)
    with daemon(site) as running:
        text = scrape(site.port)
        assert (sample(text, LAST_CHECK), sample(text, FAILURES)) == (0, 0)
        wait_restored(running)
        check(config)
        passed = json.loads((site.root / "cache" / RECORD).read_text())["last_passed"]
        assert sample(wait_sample(site, LAST_CHECK, passed), LAST_CHECK) == passed
        # A failing check (wrong password: the engine check and the drill fail) is served
        # too, and a passing one afterwards leaves the last passed check the newest.
        right = password.read_text()
        password.write_text("wrong\n")
        check(config, expect=1)
        text = wait_sample(site, FAILURES, 1)
        assert sample(text, FAILURES) == 1
        failed = sample(text, LAST_FAILURE)
        assert failed is not None and failed > passed
        assert sample(text, LAST_CHECK) == passed
        password.write_text(right)
        check(config)
        again = json.loads((site.root / "cache" / RECORD).read_text())["last_passed"]
        text = wait_sample(site, LAST_CHECK, again)
        assert sample(text, LAST_CHECK) == again > failed
        assert sample(text, FAILURES) == 1


def test_a_planted_bad_check_record_is_ignored_with_one_warning(
    site: Site, local_backend: Backend
) -> None:
    config, _ = offsite_site(site, local_backend, upload=False)
    cache = site.root / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    planted = cache / RECORD
    planted.write_text('{"version": 1, "last_passed": 1e999}\n')
    os.chmod(planted, 0o600)
    with daemon(site) as running:
        time.sleep(5)  # the daemon looks at the record every 2 s: it may warn only once
        text = scrape(site.port)
        assert sample(text, LAST_CHECK) == 0
        ignored = running.events("offsite check record ignored")
        assert len(ignored) == 1, ignored
        assert ignored[0]["path"] == str(planted)
        # The next check replaces it with a good record, which the daemon then serves.
        wait_restored(running)
        check(config)
        passed = json.loads(planted.read_text())["last_passed"]
        assert sample(wait_sample(site, LAST_CHECK, passed), LAST_CHECK) == passed
        assert len(running.events("offsite check record ignored")) == 1


def test_the_daemons_own_check_is_recorded_and_served_by_the_next_daemon(
    site: Site, local_backend: Backend
) -> None:
    _, password = offsite_site(site, local_backend, check_cron="* * * * *")
    path = site.root / "cache" / RECORD
    with daemon(site) as running:
        deadline = time.monotonic() + 150
        while not running.events("offsite check", status="ok"):
            assert time.monotonic() < deadline, running.log_text()[-2000:]
            time.sleep(0.5)
        record = json.loads(path.read_text())
        assert record["last_ok"] is True and record["failures"] == 0
        assert sample(scrape(site.port), LAST_CHECK) == record["last_passed"] > 0
    # The next daemon checks weekly only: what it serves is what the first one recorded.
    site.write(site.users, extra=offsite_section(local_backend, password, site.root / "cache"))
    with daemon(site):
        assert sample(scrape(site.port), LAST_CHECK) == record["last_passed"]
