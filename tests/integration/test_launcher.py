"""The one launcher (`spawn.launch`) and its tracker, with real processes: every child
runs in its own process group with the daemon-only signals blocked, nothing starts once
a stop has begun, a stop reaches each child with its own stop signal (even a SIGSTOPped
one) and reaps it whoever owns it, and a reaped child is never signalled again. The
kinds of children (workers, stream workers, engines) are stopped end to end in
tests/faults/test_ctrl_c.py and tests/offsite/test_offsite_stop.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from t3backupd.core.usermap import User
from t3backupd.root.spawn import (
    DAEMON_ONLY_SIGNALS,
    Abandoned,
    Child,
    ProcessTracker,
    launch,
)

ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
# Says "ready" once its handlers are set; exits 100 + the number of the first SIGINT or
# SIGTERM it gets (so the test sees which one reached it).
RECORDER = r"""
import os, signal, sys, time
for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, lambda received, frame: os._exit(100 + received))
print("ready", flush=True)
time.sleep(120)
"""
# Stays in the group of the process that started it after that process is gone (the
# number a reaped child leaves behind), writing down every signal it gets.
SURVIVOR = r"""
import os, signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGCONT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(number, lambda received, frame: log.write(f"{received}\n"))
print("ready", os.getpid(), flush=True)
time.sleep(120)
"""
LEADER = """
import subprocess, sys
subprocess.Popen([sys.executable, "-I", "-c", sys.argv[1], sys.argv[2]])
"""


def signal_set(pid: int, field: str) -> set[int]:
    """The signals in /proc/<pid>/status `field` (SigBlk, SigCgt...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            mask = int(line.split()[1], 16)
            return {number for number in range(1, 65) if mask & (1 << (number - 1))}
    raise AssertionError(f"no {field} for {pid}")


def start_recorder(tracker: ProcessTracker, stop_signal: signal.Signals) -> Child:
    child = launch(
        [sys.executable, "-I", "-c", RECORDER],
        tracker=tracker,
        env=ENVIRONMENT,
        stdin=subprocess.DEVNULL,
        stop_signal=stop_signal,
    )
    assert child is not None and child.popen.stdout is not None
    assert child.popen.stdout.readline() == b"ready\n"
    return child


@pytest.fixture
def tracker() -> Iterator[ProcessTracker]:
    tracker = ProcessTracker()
    yield tracker
    tracker.stop_all(grace=2, kill_grace=2)  # whatever a failed test left


def test_a_child_runs_in_its_own_group_with_the_daemon_signals_blocked(
    tracker: ProcessTracker,
) -> None:
    child = start_recorder(tracker, signal.SIGTERM)
    try:
        assert os.getpgid(child.pid) == child.pid  # its own group: killpg reaches it all
        assert os.getpgid(child.pid) != os.getpgrp()
        # Blocked through exec: `systemctl kill -s HUP` cannot end it, nor SIGUSR1.
        assert set(DAEMON_ONLY_SIGNALS) <= signal_set(child.pid, "SigBlk")
        # Only while spawning: the launching thread keeps its own mask.
        assert not set(DAEMON_ONLY_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert child.pidfd is not None  # its deadlines are waits on a pidfd
        assert tracker.running() == 1  # tracked from the start
        os.kill(child.pid, signal.SIGHUP)  # as `systemctl kill -s HUP` would
        assert not child.exited(0.3)
        assert signal.SIGHUP in signal_set(child.pid, "ShdPnd")  # pending, never delivered
    finally:
        assert child.stop(5, 5)
        child.release()
    assert child.returncode == 100 + signal.SIGTERM
    assert tracker.running() == 0


def test_nothing_is_launched_once_a_stop_has_begun(tracker: ProcessTracker, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    tracker.terminate_all()
    child = launch(["/usr/bin/touch", str(marker)], tracker=tracker, env=ENVIRONMENT, stdin=None)
    assert child is None
    time.sleep(0.2)
    assert not marker.exists()
    assert tracker.running() == 0


def test_a_stop_reaches_each_child_with_its_own_signal_and_reaps_it(
    tracker: ProcessTracker,
) -> None:
    # restic stops cleanly on SIGINT, borg and the workers on SIGTERM.
    interrupted = start_recorder(tracker, signal.SIGINT)
    terminated = start_recorder(tracker, signal.SIGTERM)
    os.kill(terminated.pid, signal.SIGSTOP)  # its user may have stopped it: still reached
    started = time.monotonic()
    # Nobody else waits for them here (as when the CLI's main thread owns them): the stop
    # reaps them itself, so nothing is left behind once it returns.
    assert tracker.stop_all(grace=10, kill_grace=5) == []
    assert time.monotonic() - started < 5
    assert interrupted.returncode == 100 + signal.SIGINT
    assert terminated.returncode == 100 + signal.SIGTERM
    for child in (interrupted, terminated):
        child.release()
    assert tracker.running() == 0


def test_a_reaped_child_is_never_signalled(tracker: ProcessTracker, tmp_path: Path) -> None:
    """Once reaped, a child's number is free: the group it led may be someone else's by
    then. Here a process left in that group stands for whoever holds the number: no
    path that signals children (its owner's stop, a tracker stop, the reaper of
    abandoned workers) reaches it."""
    log = tmp_path / "signals"
    log.touch()
    child = launch(
        [sys.executable, "-I", "-c", LEADER, SURVIVOR, str(log)],
        tracker=tracker,
        env=ENVIRONMENT,
        stdin=subprocess.DEVNULL,
    )
    assert child is not None and child.popen.stdout is not None
    ready, survivor = child.popen.stdout.readline().split()
    assert ready == b"ready"
    survivor_pid = int(survivor)
    try:
        assert os.getpgid(survivor_pid) == child.pid
        assert child.exited(10)
        assert child.popen.wait(10) == 0  # reaped, its group (the survivor) still there
        assert not child.signal(signal.SIGTERM)
        child.request_stop()
        assert child.stop(0.2, 0.2)
        assert child.finish(0.2)
        assert child.wait(0.2) == 0
        tracker.terminate_all()
        assert tracker.stop_all(grace=0.5, kill_grace=0.5) == []
        abandoned = Abandoned()  # the background reaper SIGKILLs each group it holds
        abandoned.add(User("nobody", 65534, 65534, "/nonexistent"), "snapshot", child)
        abandoned.reap_now()
        assert abandoned.stuck() == []
        time.sleep(0.3)  # time for any signal to land
        assert log.read_text() == ""
        assert Path(f"/proc/{survivor_pid}").exists()
    finally:
        os.kill(survivor_pid, signal.SIGKILL)  # ours: started by this test's child
        child.release()


def test_without_a_pidfd_a_child_is_waited_for_without_being_reaped_early(
    tracker: ProcessTracker, tmp_path: Path
) -> None:
    """pidfd_open can fail (no descriptor left): the deadlines then look with waitid
    and never collect the status before `finish`, which must still reach the group."""
    log = tmp_path / "signals"
    child = launch(
        [sys.executable, "-I", "-c", LEADER, SURVIVOR, str(log)],
        tracker=tracker,
        env=ENVIRONMENT,
        stdin=subprocess.DEVNULL,
    )
    assert child is not None and child.popen.stdout is not None and child.pidfd is not None
    os.close(child.pidfd)
    child.pidfd = None  # as if pidfd_open had failed
    survivor_pid = int(child.popen.stdout.readline().split()[1])
    try:
        assert child.exited(10)
        assert child.exited_now()
        assert child.returncode is None  # exited, not reaped: its group is still ours
        assert child.finish()
        assert child.returncode == 0
        deadline = time.monotonic() + 10
        while Path(f"/proc/{survivor_pid}").exists() and " Z" not in state_of(survivor_pid):
            assert time.monotonic() < deadline, "the group was not killed"
            time.sleep(0.02)
    finally:
        with suppress(ProcessLookupError):
            os.kill(survivor_pid, signal.SIGKILL)
        child.release()


def state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:2]
    except OSError:
        return " X"
