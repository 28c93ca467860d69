"""The daemon SIGKILLed in the middle of a pass, then started again.

What a crash leaves depends on what dies. The worker runs in its own process group, so
the daemon's death alone does not kill it: outside systemd it is orphaned, finishes its
job (publishing a complete, verified snapshot; its report goes to a closed pipe) and
holds the user's lock until then, so a pass for that user started meanwhile fails with
`busy`. Under systemd, a failed `KillMode=mixed` unit has what remains of its cgroup
SIGKILLed before `Restart=` starts a new daemon, and a host crash or the OOM killer
takes the whole tree: both leave a half-written temp file and no report. That is the
case simulated here (the daemon and its worker's group are SIGKILLed together).

Promises under test: nothing partial is ever published; after a whole-tree kill the
restarted daemon restores its metrics from disk, catches up on the missed run and
removes the stale temp; after the daemon alone is killed, its orphaned worker still
publishes a complete snapshot, which the restarted daemon counts as the run it missed.
Real users, the real daemon with a NOTIFY_SOCKET the test owns, real /metrics scrapes.
Needs root (real users, setuid).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.daemon import (
    FAR_FUTURE_CRON,
    Running,
    free_port,
    inventory_done,
    sample,
    scrape,
    start_daemon,
)
from support.snapshots import (
    UserSource,
    assert_verified,
    json_config,
    temps_in,
    user_source,
    wait_for_partial_copy,
    worker_pids,
)
from support.system import log_events, run_as, snapshot_files, t3backupd

from t3backupd.core.naming import format_name, parse_name
from t3backupd.core.protocol import FAILURE_REASONS
from t3backupd.core.usermap import User

START_TIMEOUT = 30.0
PASS_TIMEOUT = 90.0


# --- the user's files ----------------------------------------------------------------------


def snapshot_time(name: str) -> float:
    parsed = parse_name(name)
    assert parsed is not None, name
    return parsed.time.timestamp()


def backdate(user: User, directory: Path, name: str, when: datetime) -> str:
    """Rename a snapshot (and its checksum line) as if taken at `when`, as the user."""
    new = format_name(when, None)
    script = 'cd "$1" && mv -- "$2" "$3" && rm -- "$2.sha256" && sha256sum -- "$3" > "$3.sha256"'
    run_as(user, ["sh", "-c", script, "sh", str(directory), name, new])
    return new


def wait_for_attempt(port: int, user: User, timeout: float = PASS_TIMEOUT) -> str:
    """A scrape taken once the user's first attempt since start is counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = scrape(port)
        if sample(text, "t3backup_attempts_total", user=user.name):
            return text
        time.sleep(0.1)
    raise AssertionError("the catch-up pass never finished")


def config_in(directory: Path, user: User, port: int, cron: str) -> Path:
    directory.mkdir(mode=0o755)
    extra = (
        f'[schedule]\ncron = "{cron}"\ntimezone = "UTC"\ncatch_up = true\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n[retention]\nkeep = 14\n'
    )
    return json_config(directory, [user], extra)


def assert_no_failures(text: str, user: User) -> None:
    for reason in FAILURE_REASONS:
        assert not sample(text, "t3backup_failures_total", user=user.name, reason=reason), reason


def restored_scrape(running: Running) -> str:
    """A scrape once the start-up listing of snapshots is done (it runs after READY=1)."""
    ready = running.notify.wait_field("READY", "1", timeout=START_TIMEOUT)
    running.notify.wait_for(inventory_done, timeout=START_TIMEOUT, after=ready)
    return scrape(running.notify.port)


def assert_restored_at_ready(at_ready: str, user: User, name: str) -> None:
    """Scraped once listed: the metrics restored from disk show `name` as the only snapshot."""
    assert sample(at_ready, "t3backup_last_success_timestamp_seconds", user=user.name) == (
        snapshot_time(name)
    )
    assert sample(at_ready, "t3backup_snapshots", user=user.name) == 1


def stop_cleanly(running: Running) -> list[dict[str, Any]]:
    """SIGTERM: the daemon exits 0 within a minute. Returns its JSON log events."""
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(60) == 0
    return log_events(running.log_text())


def crashable_daemon(config: Path, port: int, name: str) -> AbstractContextManager[Running]:
    """The real daemon on `config`, not waited for; SIGKILLed afterwards if alive."""
    return start_daemon(config, port, config.parent, name, wait_ready=False, stop=signal.SIGKILL)


@pytest.fixture(scope="module")
def big_source() -> Iterator[UserSource]:
    """One user with a ~300 MB database, made once: copying it takes long enough to kill."""
    with user_source(size_mb=300, seed=4) as made:
        yield made


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_daemon_killed_mid_pass_restarts_cleans_up_catches_up_and_restores_metrics(
    big_source: UserSource,
) -> None:
    user, source_bytes = big_source.user, big_source.source_bytes
    port = free_port()

    # A snapshot from two days ago (taken now, then dated back), and a schedule that
    # last fired two minutes ago and next fires in a year: every start must catch up.
    fired = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    cron = f"{fired.minute} {fired.hour} {fired.day} {fired.month} *"
    config = config_in(big_source.sandbox / "crash", user, port, cron)
    user_dir = config.parent / "dest" / user.name
    first = t3backupd(config, "snapshot")
    assert first.returncode == 0, first.stdout + first.stderr
    [taken] = snapshot_files(user_dir)
    earlier = backdate(user, user_dir, taken, fired - timedelta(days=2))
    assert assert_verified(user, user_dir) == [earlier]

    # 1. The daemon starts, catches up, and the whole tree is SIGKILLed mid-copy.
    with crashable_daemon(config, port, "crashed") as crashed:
        crashed.notify.ready_scrape(START_TIMEOUT)
        temp, _ = wait_for_partial_copy(user_dir, source_bytes)
        [worker] = worker_pids(user)
        os.kill(crashed.process.pid, signal.SIGKILL)
        os.killpg(worker, signal.SIGKILL)
        assert crashed.process.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while worker_pids(user) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker_pids(user) == []
    # The crash left its half copy under the hidden temp name only.
    assert temp in temps_in(user_dir)
    assert (user_dir / temp).stat().st_size < source_bytes
    assert assert_verified(user, user_dir) == [earlier]

    # 2. Restarted: metrics from disk once listed, then the catch-up pass heals.
    with crashable_daemon(config, port, "restarted") as restarted:
        at_ready = restored_scrape(restarted)
        assert_restored_at_ready(at_ready, user, earlier)
        assert sample(at_ready, "t3backup_last_snapshot_size_bytes", user=user.name) == (
            (user_dir / earlier).stat().st_size
        )

        after_pass = wait_for_attempt(port, user)
        names = assert_verified(user, user_dir)
        assert temps_in(user_dir) == []
        [new] = [name for name in names if name != earlier]
        assert snapshot_time(new) > fired.timestamp()
        assert sample(after_pass, "t3backup_last_success_timestamp_seconds", user=user.name) == (
            snapshot_time(new)
        )
        assert sample(after_pass, "t3backup_snapshots", user=user.name) == 2
        assert_no_failures(after_pass, user)

        events = stop_cleanly(restarted)
    assert any(event.get("event", "").startswith("catching up") for event in events)
    passes = [event.get("trigger") for event in events if event.get("event") == "pass started"]
    assert passes == ["catch-up"]
    outcomes = [event.get("status") for event in events if event.get("event") == "snapshot"]
    assert outcomes == ["ok"]


@pytest.mark.root
@pytest.mark.slow
def test_daemon_killed_alone_leaves_its_worker_to_finish_a_complete_snapshot(
    big_source: UserSource,
) -> None:
    user, source_bytes = big_source.user, big_source.source_bytes
    port = free_port()
    config = config_in(big_source.sandbox / "orphan", user, port, FAR_FUTURE_CRON)
    user_dir = config.parent / "dest" / user.name

    # No snapshot yet, so the daemon catches up at start; only the daemon is killed.
    with crashable_daemon(config, port, "crashed") as crashed:
        crashed.notify.ready_scrape(START_TIMEOUT)
        wait_for_partial_copy(user_dir, source_bytes)
        [worker] = worker_pids(user)
        os.kill(crashed.process.pid, signal.SIGKILL)
        assert crashed.process.wait(10) == -signal.SIGKILL
    assert worker_pids(user) == [worker], "the worker outlives the daemon (own group)"
    deadline = time.monotonic() + 60
    while worker_pids(user):
        assert time.monotonic() < deadline, "the orphaned worker never finished"
        time.sleep(0.05)
    # It finished its job: one complete, verified snapshot, nothing left behind.
    [name] = assert_verified(user, user_dir)
    assert temps_in(user_dir) == []

    # Restarted: the orphan's snapshot is on disk and in the metrics, so no catch-up.
    with crashable_daemon(config, port, "restarted") as restarted:
        assert_restored_at_ready(restored_scrape(restarted), user, name)
        events = stop_cleanly(restarted)
    # Decided once listed (before the STATUS restored_scrape waited for): no catch-up.
    assert any(event.get("event") == "inventory finished" for event in events)
    assert not [event for event in events if event.get("event", "").startswith("catching up")]
    assert not [event for event in events if event.get("event") == "pass started"]
