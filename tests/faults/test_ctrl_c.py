"""Ctrl-C (SIGINT) or SIGTERM on the CLI ends it within a bounded time, its workers gone
and no temp file left, whatever state its worker is in: running, SIGSTOPped by its user,
blocked in the kernel, not started yet, or just reaped; and whatever signal dispositions
the CLI inherited (a command started with `&` by a non-interactive shell inherits SIGINT
ignored). Real users, real databases, the real CLI and real signals. Needs root.

`tests/stress/under-load.sh 50 tests/faults/test_ctrl_c.py` runs these 50 times in a row
under two CPU-burning loops and a direct-I/O writer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import fuse
from support.snapshots import (
    HOLD_EXCLUSIVE_LOCK,
    MakeUser,
    json_config,
    parent_of,
    temps_in,
    worker_pids,
)
from support.system import PYTHON, create_state_db, signal_and_wait, spawn_as

from t3backupd.core.usermap import User
from t3backupd.root.spawn import KILL_GRACE_SECONDS, STOP_GRACE_SECONDS

pytestmark = pytest.mark.root

# A worker that ends on SIGTERM (or SIGKILL) leaves at once; this is the CLI's own exit
# on top (interpreter start-up is not in it: it is timed from the signal).
QUICK_STOP_SECONDS = 5.0
# Past SIGTERM and SIGKILL's graces, the CLI leaves a worker blocked in the kernel.
BOUND_SECONDS = STOP_GRACE_SECONDS + KILL_GRACE_SECONDS + QUICK_STOP_SECONDS
# Starts the CLI with SIGINT and SIGTERM ignored, as `cmd &` in a script leaves them.
IGNORING = ["/bin/sh", "-c", 'trap "" INT TERM; exec "$@"', "sh"]


def config_in(directory: Path, user: User) -> Path:
    extra = "[snapshot]\ntimeout_seconds = 900\n[retention]\nkeep = 14\n"
    return json_config(directory, [user], extra)


def start_cli(config: Path, inherit_ignored: bool = False) -> subprocess.Popen[str]:
    command = [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "snapshot"]
    return subprocess.Popen(
        (IGNORING if inherit_ignored else []) + command,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip


def its_worker(cli: subprocess.Popen[str], user: User) -> int:
    """The pid of this CLI's worker, once it runs (`python -I -m t3backupd.worker`)."""
    deadline = time.monotonic() + 30
    while not (pids := [pid for pid in worker_pids(user) if parent_of(pid) == cli.pid]):
        assert cli.poll() is None, cli.communicate()
        assert time.monotonic() < deadline, "worker never started"
        time.sleep(0.01)
    return pids[0]


def handlers_installed(pid: int) -> bool:
    """True once `pid` catches SIGTERM (SigCgt in /proc): the CLI's handlers are set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def stop_and_time(cli: subprocess.Popen[str], signum: int) -> tuple[str, str, float]:
    return signal_and_wait(cli, signum, BOUND_SECONDS + 20)


def left_behind(user: User, user_dir: Path) -> tuple[list[str], list[str]]:
    """(`ps` lines of the user's workers still running, temp files in its directory)."""
    pids = worker_pids(user)
    ps = subprocess.run(
        ["ps", "-o", "pid,ppid,etimes,stat,args", "-p", ",".join(map(str, pids))],
        capture_output=True, text=True,
    ).stdout.splitlines()[1:] if pids else []  # fmt: skip
    return ps, temps_in(user_dir) if user_dir.is_dir() else []


@pytest.fixture
def held_source(make_user: MakeUser) -> Iterator[tuple[User, Path]]:
    """A user whose source is exclusively locked (their worker waits until stopped)."""
    user = make_user()
    database = create_state_db(user, size_mb=4)
    holder = spawn_as(user, [PYTHON, "-I", "-c", HOLD_EXCLUSIVE_LOCK, str(database)],
                      stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield user, database
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("inherit_ignored", [False, True], ids=["plain", "inherited-ignored"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("frozen", [False, True], ids=["running", "SIGSTOPped"])
def test_a_stop_signal_ends_the_cli_its_worker_and_its_temp_files(
    sandbox: Path,
    held_source: tuple[User, Path],
    signum: int,
    inherit_ignored: bool,
    frozen: bool,
) -> None:
    user, _ = held_source
    config = config_in(sandbox, user)
    cli = start_cli(config, inherit_ignored)
    worker = its_worker(cli, user)
    if frozen:  # its user may SIGSTOP it: the CLI's SIGTERM must still take effect
        os.kill(worker, signal.SIGSTOP)
    stdout, stderr, elapsed = stop_and_time(cli, signum)
    assert cli.returncode == 130, stdout + stderr
    assert "t3backupd: interrupted" in stderr.splitlines(), stderr[-2000:]
    assert "Traceback" not in stderr
    assert elapsed < QUICK_STOP_SECONDS, f"CLI took {elapsed:.1f}s to stop"
    # Gone before the CLI exited, not merely asked to go (nothing left mid-cleanup).
    assert left_behind(user, sandbox / "dest" / user.name) == ([], [])


def test_a_stop_at_any_moment_of_a_run_leaves_nothing_behind(
    sandbox: Path, make_user: MakeUser
) -> None:
    """SIGINT at moments spread over a whole run: before the worker starts, while it
    copies and verifies, just as it is reaped, while the results are printed."""
    user = make_user()
    create_state_db(user, size_mb=2)
    config = config_in(sandbox, user)
    delays = [0.0, 0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0]
    outcomes: list[int] = []
    for delay in delays:
        cli = start_cli(config)
        deadline = time.monotonic() + 30
        while not handlers_installed(cli.pid):
            assert cli.poll() is None, cli.communicate()
            assert time.monotonic() < deadline, "the CLI never installed its handlers"
            time.sleep(0.002)
        time.sleep(delay)
        stdout, stderr, elapsed = stop_and_time(cli, signal.SIGINT)
        outcomes.append(cli.returncode)
        assert cli.returncode in (0, 130), (delay, stdout + stderr)
        assert "Traceback" not in stderr, (delay, stderr[-2000:])
        assert elapsed < QUICK_STOP_SECONDS, (delay, elapsed)
        assert left_behind(user, sandbox / "dest" / user.name) == ([], []), delay
    assert 130 in outcomes, outcomes  # some stops really interrupted a run


def test_a_worker_blocked_in_the_kernel_bounds_the_stop_and_is_named(
    sandbox: Path, make_user: MakeUser
) -> None:
    """A worker in uninterruptible sleep (its source on a FUSE mount that never answers)
    survives SIGTERM and SIGKILL: the CLI still exits within its bound, says which pid
    it left, and once the kernel lets go the worker is gone with nothing left."""
    user = make_user()
    create_state_db(user, size_mb=1)  # the mount point: the FUSE mount goes over it
    with fuse.stalled_userdata(sandbox) as mount:
        ready, server = mount(user)
        cli = start_cli(config_in(sandbox, user))
        worker = its_worker(cli, user)
        stalled = Path(f"{ready}.stalled")  # the server has the lookup: it never answers
        fuse.wait_until(lambda: stalled.exists(), 30, "the stalled lookup")
        stdout, stderr, elapsed = stop_and_time(cli, signal.SIGINT)
        assert "D" in fuse.process_state(worker), "not blocked in the kernel after all?"
        assert cli.returncode == 130, stdout + stderr
        assert "Traceback" not in stderr
        assert STOP_GRACE_SECONDS <= elapsed < BOUND_SECONDS, elapsed
        events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        [left] = [event for event in events if event.get("event") == "workers not stopped"]
        assert left["pids"] == [worker], left
        server.kill()  # the kernel aborts the request: the SIGKILLed worker dies
        server.wait(30)
        fuse.wait_until(lambda: worker not in worker_pids(user), 30, "the worker's end")
    assert left_behind(user, sandbox / "dest" / user.name) == ([], [])
