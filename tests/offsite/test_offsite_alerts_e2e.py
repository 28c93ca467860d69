"""Issue 13's "done when" for the alerts: the bucket goes away and the offsite-failing
alert fires; it comes back and the alert resolves. All real: a real Prometheus (Debian's)
on 127.0.0.1 evaluating the shipped offsite alert rules, scraping the real daemon (`t3backupd
run` as a subprocess, passes started by SIGUSR1), which uploads through restic to a real
S3 server on loopback (`rclone serve s3`), stopped and started again by pid.

The test copy of the rules changes only `for:`, to 0s (as in
tests/integration/test_prometheus_e2e.py), so the alert fires within the test; the alert
resolves because the healing pass puts the newest local snapshot offsite, as shipped.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import need
from support.daemon import Running, Site, daemon, free_port
from support.offsite import Backend, need_restic, offsite_section, password_file
from support.offsite import s3_backend as start_s3
from support.system import t3backupd

pytestmark = [pytest.mark.root, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus" / "t3backupd-alerts.yml"
ALERT = "T3BackupOffsiteFailing"


@pytest.fixture
def s3(sandbox: Path) -> Iterator[Backend]:
    need_restic()
    with start_s3(sandbox) as backend:
        yield backend


def rules_with_for_0s(shipped: str) -> str:
    """The shipped rules with every `for:` 0s."""
    return re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", shipped)


def alerts(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as reply:
        body: dict[str, Any] = json.load(reply)
    found: list[dict[str, Any]] = body["data"]["alerts"]
    return found


def failing(port: int, user: str) -> list[dict[str, Any]]:
    try:
        current = alerts(port)
    except OSError:
        return []
    return [
        alert
        for alert in current
        if alert["labels"]["alertname"] == ALERT
        and alert["labels"].get("user") == user
        and alert["state"] == "firing"
    ]


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:]
    raise AssertionError(f"{what} within {timeout:.0f}s; prometheus log:\n{tail}")


def offsite_statuses(running: Running, user: str) -> list[str]:
    return [str(event.get("status")) for event in running.events("offsite", user=user)]


def run_pass(running: Running, user: str, log: Path) -> str:
    """One pass (SIGUSR1); the offsite status it ended with for `user`."""
    before = len(offsite_statuses(running, user))
    running.signal(signal.SIGUSR1)
    wait_until(lambda: len(offsite_statuses(running, user)) > before, 60, "no offsite outcome", log)
    return offsite_statuses(running, user)[-1]


def test_offsite_failing_fires_when_the_bucket_goes_away_and_resolves_when_back(
    site: Site, s3: Backend
) -> None:
    need(shutil.which("prometheus") is not None, "needs prometheus (Debian package prometheus)")
    started = time.monotonic()
    user = site.add_user()
    password = password_file(site.root)
    extra = offsite_section(
        s3, password, site.root / "cache", s3.env_file(site.root), timeout_seconds=30
    )
    config = site.write([user], extra=extra)
    init = t3backupd(config, "offsite", "init")
    assert init.returncode == 0, init.stderr

    rules = site.root / "rules.yml"
    rules.write_text(rules_with_for_0s(RULES.read_text()))
    prometheus_port = free_port()
    prometheus_config = site.root / "prometheus.yml"
    prometheus_config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n  - job_name: t3backupd\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{site.port}']\n"
    )
    log = site.root / "prometheus.log"
    with daemon(site) as running, log.open("wb") as log_handle:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={prometheus_config}",
             f"--storage.tsdb.path={site.root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=log_handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert run_pass(running, user.name, log) == "ok"
            # Healthy: scraped for a while, and nothing is failing.
            wait_until(
                lambda: bool(alerts_or_none(prometheus_port) is not None),
                30,
                "prometheus never answered",
                log,
            )
            time.sleep(3)
            assert failing(prometheus_port, user.name) == []

            s3.stop()  # the bucket goes away (the server, ended by pid)
            assert run_pass(running, user.name, log) == "failed"
            wait_until(
                lambda: bool(failing(prometheus_port, user.name)), 20, f"{ALERT} never fired", log
            )
            (alert,) = failing(prometheus_port, user.name)
            assert alert["labels"]["reason"] == "unreachable", alert

            s3.start()  # back again: the next pass heals (uploads what it missed)
            assert run_pass(running, user.name, log) == "ok"
            wait_until(
                lambda: (
                    not any(
                        a["labels"]["alertname"] == ALERT
                        for a in alerts_or_none(prometheus_port) or []
                    )
                ),
                40,
                f"{ALERT} never resolved",
                log,
            )
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(30)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(10)
    assert time.monotonic() - started < 90


def alerts_or_none(port: int) -> list[dict[str, Any]] | None:
    try:
        return alerts(port)
    except OSError:
        return None
