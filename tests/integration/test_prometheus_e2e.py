"""End to end: the real daemon's real metrics, scraped by a real Prometheus (Debian's
2.42) on 127.0.0.1 evaluating the shipped alert rules.

The only change made to the shipped rules is `for:` set to 0s, so the alert can fire
within the test's minute; `for:` timing itself is covered by the promtool rule tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import need
from support.daemon import Site, cli_snapshot, daemon, free_port
from support.system import IS_ROOT

from t3backupd.core.naming import format_name

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus" / "t3backupd-alerts.yml"
OLD_NAME = "state-20261101T033000Z.sqlite"  # weeks before any run of this test


def make_old(site: Site, user: str, name: str = OLD_NAME) -> None:
    """Rename the user's only snapshot to `name` (name + checksum): an older one."""
    directory = site.dest / user
    (snapshot,) = [path for path in directory.glob("state-*.sqlite")]
    digest = (directory / f"{snapshot.name}.sha256").read_text().split()[0]
    snapshot.rename(directory / name)
    (directory / f"{snapshot.name}.sha256").unlink()
    checksum = directory / f"{name}.sha256"
    checksum.write_text(f"{digest}  {name}\n")
    shutil.chown(checksum, user, user)


def alerts(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as reply:
        body: dict[str, Any] = json.load(reply)
    found: list[dict[str, Any]] = body["data"]["alerts"]
    return found


def schedule_and_old_name(schedule: str) -> tuple[str, str]:
    """A cron of that period that does not fire during the test, and a snapshot name
    stale under it: weeks old for a daily one, 4 h old for an hourly one (stale only
    because the threshold follows the schedule: 1 h + 2 h, not the daily 26 h)."""
    now = datetime.now(UTC)
    if schedule == "daily":
        return f"0 {(now.hour + 12) % 24} * * *", OLD_NAME
    return f"{(now.minute + 30) % 60} * * * *", format_name(now - timedelta(hours=4))


@pytest.mark.parametrize("schedule", ["daily", "hourly"])
def test_real_prometheus_fires_the_stale_alert_for_the_old_user_only(
    site: Site, schedule: str
) -> None:
    need(IS_ROOT, "needs root: two real users (useradd)")
    need(shutil.which("prometheus") is not None, "needs prometheus (Debian package prometheus)")
    started = time.monotonic()
    old_user, fresh_user = site.add_user(), site.add_user()
    cron, old_name = schedule_and_old_name(schedule)
    site.write([old_user, fresh_user], cron=cron)
    cli_snapshot(site)
    make_old(site, old_user.name, old_name)

    rules = site.root / "rules.yml"
    rules.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", RULES.read_text()))
    prometheus_port = free_port()
    config = site.root / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n  - job_name: t3backupd\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{site.port}']\n"
    )
    with daemon(site), (site.root / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={site.root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            firing: list[dict[str, Any]] = []
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                time.sleep(1)
                try:
                    current = alerts(prometheus_port)
                except OSError:
                    continue  # not listening yet
                firing = [
                    alert
                    for alert in current
                    if alert["labels"]["alertname"] == "T3BackupStale"
                    and alert["state"] == "firing"
                ]
                if firing:
                    break
            log_tail = (site.root / "prometheus.log").read_text(errors="replace")[-2000:]
            assert firing, f"T3BackupStale never fired; prometheus log:\n{log_tail}"
            # Give it a few more evaluations: the fresh user must still not be alerting.
            time.sleep(3)
            stale_users = {
                alert["labels"]["user"]
                for alert in alerts(prometheus_port)
                if alert["labels"]["alertname"] == "T3BackupStale"
            }
            assert stale_users == {old_user.name}
            summary = firing[0]["annotations"]["summary"]
            assert old_user.name in summary
        finally:
            prometheus.terminate()
            prometheus.wait(30)
    assert time.monotonic() - started < 60
