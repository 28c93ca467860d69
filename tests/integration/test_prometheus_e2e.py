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
from pathlib import Path
from typing import Any

from support import need
from support.daemon import Site, cli_snapshot, daemon, free_port
from support.system import IS_ROOT

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus" / "t3backupd-alerts.yml"
OLD_NAME = "state-20261101T033000Z.sqlite"  # weeks before any run of this test


def make_old(site: Site, user: str) -> None:
    """Turn the user's only snapshot into one taken on 2026-11-01 (name + checksum)."""
    directory = site.dest / user
    (snapshot,) = [path for path in directory.glob("state-*.sqlite")]
    digest = (directory / f"{snapshot.name}.sha256").read_text().split()[0]
    snapshot.rename(directory / OLD_NAME)
    (directory / f"{snapshot.name}.sha256").unlink()
    checksum = directory / f"{OLD_NAME}.sha256"
    checksum.write_text(f"{digest}  {OLD_NAME}\n")
    shutil.chown(checksum, user, user)


def alerts(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as reply:
        body: dict[str, Any] = json.load(reply)
    found: list[dict[str, Any]] = body["data"]["alerts"]
    return found


def test_real_prometheus_fires_the_stale_alert_for_the_old_user_only(site: Site) -> None:
    need(IS_ROOT, "needs root: two real users (useradd)")
    need(shutil.which("prometheus") is not None, "needs prometheus (Debian package prometheus)")
    started = time.monotonic()
    old_user, fresh_user = site.add_user(), site.add_user()
    site.write([old_user, fresh_user])
    cli_snapshot(site)
    make_old(site, old_user.name)

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
