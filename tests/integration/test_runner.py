"""The one per-user job runner: bounded concurrency, the caller's logging context in every
thread, one event per user, results to a callback, a crashing job isolated.

Real workers (as the invoking user, non-root mode: no uid switch needed for these).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from support.system import current_user

from t3backupd.core.config import Config, RetentionPolicy
from t3backupd.core.protocol import Report, UserResult
from t3backupd.core.usermap import User
from t3backupd.root.passes import run_inventory, run_verify_pass
from t3backupd.root.runner import run_for_users
from t3backupd.root.spawn import ProcessTracker


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Log events as the daemon renders them: with the bound context merged in
    (capture_logs() would drop contextvars, which is what this file is about)."""
    capture = structlog.testing.LogCapture()
    old = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.configure(**old)
        structlog.contextvars.clear_contextvars()


def users_named(*names: str) -> list[User]:
    me = current_user()
    return [User(name, me.uid, me.gid, me.home) for name in names]


def test_per_user_verify_events_carry_the_pass_id(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    config = Config(dest=str(tmp_path / "dest"), retention=RetentionPolicy())
    users = users_named("ann", "bob")
    with structlog.contextvars.bound_contextvars(pass_id="p123", trigger="schedule"):  # noqa: S106  # a pass id, not a password
        results = run_verify_pass(config, users, latest_only=True)
    assert [result.user.name for result in results] == ["ann", "bob"]
    verify_events = [event for event in events if event["event"] == "verify"]
    assert sorted(event["user"] for event in verify_events) == ["ann", "bob"]
    assert {event["pass_id"] for event in verify_events} == {"p123"}
    assert {event["trigger"] for event in verify_events} == {"schedule"}


def test_runner_keeps_order_bounds_concurrency_and_hands_each_result_over() -> None:
    users = users_named(*(f"u{index}" for index in range(6)))
    running = 0
    peak = 0
    lock = threading.Lock()
    seen: list[str] = []

    def job(user: User) -> UserResult:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return UserResult(user, Report(action="inventory", status="ok"), time.time(), 0.05)

    results = run_for_users(
        users,
        job,
        concurrency=2,
        tracker=ProcessTracker(),
        on_result=lambda result: seen.append(result.user.name),
        action="inventory",
    )
    assert [result.user.name for result in results] == [user.name for user in users]
    assert sorted(seen) == sorted(user.name for user in users)
    assert peak == 2


def test_a_job_that_raises_is_one_users_worker_crashed_not_the_passes(
    events: list[dict[str, Any]],
) -> None:
    users = users_named("good", "bad", "late")

    def job(user: User) -> UserResult:
        if user.name == "bad":
            raise RuntimeError("bug")
        return UserResult(user, Report(action="inventory", status="ok"), time.time(), 0.0)

    results = run_for_users(users, job, concurrency=1, tracker=ProcessTracker(), action="inventory")
    assert [(r.user.name, r.report.status, r.report.reason) for r in results] == [
        ("good", "ok", None),
        ("bad", "failed", "worker_crashed"),
        ("late", "ok", None),
    ]
    crashed = [event for event in events if event["event"] == "job crashed"]
    assert [event["user"] for event in crashed] == ["bad"]


def test_users_not_started_when_stopping_are_left_out(tmp_path: Path) -> None:
    tracker = ProcessTracker()
    tracker.stopping.set()
    config = Config(dest=str(tmp_path / "dest"))
    assert run_inventory(config, users_named("ann"), 2, tracker) == []


def test_a_stop_during_a_launch_still_reaches_the_new_process() -> None:
    # The stop request comes while the process is being started (as a CLI's Ctrl-C can
    # while a runner thread is in Popen): it waits for the launch, then signals it.
    tracker = ProcessTracker()
    stopper = threading.Thread(target=tracker.terminate_all)

    def start() -> subprocess.Popen[bytes]:
        stopper.start()
        time.sleep(0.2)  # the stop is waiting for the tracker's lock by now
        return subprocess.Popen(["sleep", "60"], process_group=0)

    process = tracker.launch(start)
    assert process is not None
    stopper.join(10)
    assert process.wait(10) == -signal.SIGTERM
