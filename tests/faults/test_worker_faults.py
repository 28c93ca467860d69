"""Faults in the worker's path: a source locked past the timeout, a worker SIGKILLed in
the middle of its copy. Real users, real databases, the real CLI. Needs root."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.snapshots import (
    HOLD_EXCLUSIVE_LOCK,
    MakeUser,
    UserSource,
    json_config,
    published_state,
    snapshot_events,
    temps_in,
    user_source,
    wait_for_partial_copy,
    worker_pids,
)
from support.system import PYTHON, create_state_db, snapshot_files, spawn_as, t3backupd

from t3backupd.core.usermap import User


def config_in(directory: Path, user: User, method: str = "backup", timeout: int = 900) -> Path:
    extra = (
        f'[snapshot]\nmethod = "{method}"\ntimeout_seconds = {timeout}\n[retention]\nkeep = 14\n'
    )
    return json_config(directory, [user], extra)


def snapshot_event(stderr: str, user: User) -> dict[str, object]:
    [event] = [event for event in snapshot_events(stderr) if event.get("user") == user.name]
    return event


@pytest.mark.root
def test_source_locked_past_timeout_fails_with_timeout_and_leaves_no_temp(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=4)
    config = config_in(sandbox, user, timeout=2)
    earlier = t3backupd(config, "snapshot")
    assert earlier.returncode == 0, earlier.stdout + earlier.stderr
    user_dir = sandbox / "dest" / user.name
    before = published_state(user, user_dir)
    assert len(before) == 1

    hold = [PYTHON, "-I", "-c", HOLD_EXCLUSIVE_LOCK, str(database)]
    holder = spawn_as(user, hold, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = t3backupd(config, "snapshot", timeout=60)
        elapsed = time.monotonic() - started
        assert holder.poll() is None, "the lock holder must still hold the lock"
    finally:
        holder.kill()
        holder.wait()

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{user.name}: FAILED timeout" in result.stdout
    event = snapshot_event(result.stderr, user)
    assert (event["status"], event["reason"]) == ("failed", "timeout")
    assert 2 <= elapsed < 2 + 10, "the worker's own deadline, not the parent's slack"
    assert temps_in(user_dir) == []
    assert published_state(user, user_dir) == before


@pytest.fixture(scope="module")
def big_source() -> Iterator[UserSource]:
    """One user with a ~300 MB database, made once: copying it takes long enough to kill."""
    with user_source(size_mb=300, seed=3) as made:
        yield made


def kill_worker_mid_copy(user: User, user_dir: Path, source_bytes: int) -> int:
    """Wait for the user's worker to be part-way through writing its temp copy, then
    SIGKILL it. Returns the temp file's size at the moment of the kill."""
    deadline = time.monotonic() + 60
    pids: list[int] = []
    while not pids:
        assert time.monotonic() < deadline, "worker never started"
        pids = worker_pids(user)
    assert len(pids) == 1, pids
    _, size = wait_for_partial_copy(user_dir, source_bytes, deadline - time.monotonic())
    os.kill(pids[0], signal.SIGKILL)
    return size


@pytest.mark.root
@pytest.mark.parametrize("method", ["backup", "vacuum"])
def test_worker_killed_mid_copy_publishes_nothing_partial_and_next_pass_cleans_up(
    big_source: UserSource, method: str
) -> None:
    user = big_source.user
    config = config_in(big_source.sandbox / f"kill-{method}", user, method=method)
    user_dir = config.parent / "dest" / user.name
    source_bytes = big_source.database.stat().st_size
    process = subprocess.Popen(
        [PYTHON, "-m", "t3backupd", "-c", str(config), "snapshot"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "T3BACKUPD_CONFIG": ""},
    )
    try:
        kill_worker_mid_copy(user, user_dir, source_bytes)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 1, stdout + stderr
    assert f"{user.name}: FAILED worker_crashed" in stdout
    assert snapshot_event(stderr, user)["reason"] == "worker_crashed"
    # Nothing half-written is visible under a snapshot name; the killed copy stays hidden.
    assert snapshot_files(user_dir) == []
    assert any(name.endswith(".tmp") for name in temps_in(user_dir)), "killed after the copy?"

    after = t3backupd(config, "snapshot")
    assert after.returncode == 0, after.stdout + after.stderr
    assert temps_in(user_dir) == []
    [name] = published_state(user, user_dir)
    assert after.stdout.startswith(f"{user.name}: ok {name} ")
