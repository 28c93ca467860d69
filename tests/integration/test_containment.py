"""Issue 10: no user's worker can stall the root side or leak its descriptors/threads.

Real users, real setuid workers through the one runner (`run_pass` in this process, as
root), real attacks run as the hostile user (tests/support/hostile.py): a ptrace tracer
that holds its worker stopped and then as an unreapable zombie, and a descriptor thief
that holds copies of the worker's pipes. In each, the other user's snapshot is published
on time and the hostile user's failure is named. Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support import fuse, need
from support.daemon import Running, Site, daemon, sample, scrape
from support.fuse import Mount, process_state, wait_until
from support.snapshots import json_config
from support.system import (
    IS_ROOT,
    PYTHON,
    as_user,
    create_state_db,
    snapshot_files,
    spawn_as,
    t3backupd,
)

from t3backupd.core.config import Config, SnapshotConfig
from t3backupd.core.protocol import UserResult
from t3backupd.core.usermap import User
from t3backupd.root import runner, spawn
from t3backupd.root.metrics import Metrics
from t3backupd.root.passes import run_pass
from t3backupd.root.usage import destination_space

HOSTILE = Path(__file__).parent.parent / "support" / "hostile.py"

MakeUser = Callable[[], User]
Attack = Callable[[User, str], tuple[subprocess.Popen[str], Path]]


@pytest.fixture
def fast_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter graces so one attack takes seconds, not half a minute (same code paths)."""
    monkeypatch.setattr(runner, "TIMEOUT_SLACK_SECONDS", 1.0)
    monkeypatch.setattr(spawn, "STOP_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(spawn, "KILL_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(spawn, "REAP_POLL_SECONDS", 0.2)


def config_in(sandbox: Path, timeout: int = 3) -> Config:
    return Config(
        dest=str(sandbox / "dest"),
        snapshot=replace(SnapshotConfig(), timeout_seconds=timeout, concurrency=2),
    )


@pytest.fixture
def attack(sandbox: Path) -> Iterator[Attack]:
    """Start tests/support/hostile.py MODE as a user; killed by pid afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(user: User, mode: str) -> tuple[subprocess.Popen[str], Path]:
        script = sandbox / "hostile.py"
        shutil.copy(HOSTILE, script)
        os.chmod(script, 0o644)
        out = Path(user.home) / f"{mode}.log"
        process = spawn_as(user, [PYTHON, "-I", str(script), mode, str(out)])
        started.append(process)
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_text().startswith("ready")):
            assert process.poll() is None, f"{mode} attacker exited: {process.returncode}"
            assert time.monotonic() < deadline, f"{mode} attacker did not start"
            time.sleep(0.02)
        return process, out

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def attacked(out: Path) -> list[tuple[int, str]]:
    """(worker pid, attack result) lines an attacker wrote."""
    lines = out.read_text().splitlines()[1:]
    return [(int(pid), result) for pid, result in (line.split() for line in lines)]


def by_user(results: list[UserResult]) -> dict[str, UserResult]:
    return {result.user.name: result for result in results}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def stuck_gauges(metrics: Metrics) -> dict[str, float]:
    return {
        sample.labels["user"]: sample.value
        for family in metrics.collect()
        if family.name == "t3backup_worker_stuck"
        for sample in family.samples
    }


@pytest.mark.usefixtures("fast_deadlines")
def test_a_user_holding_their_worker_by_ptrace_never_stalls_anyone(
    sandbox: Path, make_user: MakeUser, attack: Attack
) -> None:
    need(IS_ROOT, "needs root to run workers as real users")
    hostile, other = make_user(), make_user()
    for user in (hostile, other):
        create_state_db(user, size_mb=1)
    config = config_in(sandbox)
    tracer, out = attack(hostile, "ptrace")
    metrics = Metrics(CollectorRegistry())
    metrics.set_users([hostile.name, other.name])
    finished: dict[str, float] = {}

    def record(result: UserResult) -> None:
        finished[result.user.name] = time.monotonic()
        metrics.record_result(result)

    started = time.monotonic()
    results = by_user(run_pass(config, [hostile, other], on_result=record))
    seized = attacked(out)
    if seized and seized[0][1] == "EPERM":
        pytest.skip("the kernel forbids same-uid ptrace here (Yama ptrace_scope or LSM)")
    assert seized and seized[0][1] == "ok", seized
    # The other user's snapshot was published at once, not after the hostile one's wait.
    assert results[other.name].report.ok, results[other.name].report
    assert finished[other.name] - started < 3 + 2, "the other user waited on the hostile one"
    assert len(snapshot_files(sandbox / "dest" / other.name)) == 1
    # The hostile worker: stopped (timeout), killed, then an unreapable zombie: stuck.
    stuck = results[hostile.name].report
    assert (stuck.status, stuck.reason) == ("failed", "worker_stuck"), stuck
    assert "outlived SIGKILL" in stuck.message
    # Bounded: timeout 3 + slack 1 + SIGTERM grace 1 + SIGKILL grace 1 + reap grace 1.
    assert time.monotonic() - started < 3 + 1 + 1 + 1 + 1 + 3
    pid = seized[0][0]
    assert Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    assert spawn.ABANDONED.get(hostile.uid) is not None

    # Next pass: the hostile user is skipped at once (no second worker), the other runs.
    before = len(attacked(out))
    again = by_user(run_pass(config, [hostile, other], on_result=record))
    skipped = again[hostile.name]
    assert (skipped.report.reason, skipped.duration_s < 0.5) == ("worker_stuck", True)
    assert "skipped" in skipped.report.message
    assert again[other.name].report.ok
    assert len(attacked(out)) == before, "a second worker was started for a stuck user"
    assert stuck_gauges(metrics) == {hostile.name: 1.0, other.name: 0.0}

    # The tracer goes: the zombie comes back to us and is reaped in the background.
    tracer.kill()
    tracer.wait(10)
    wait_until(lambda: spawn.ABANDONED.get(hostile.uid) is None, 10, "the stuck worker's reaping")
    assert not Path(f"/proc/{pid}").exists()
    final = by_user(run_pass(config, [hostile, other], on_result=record))
    assert final[hostile.name].report.ok, final[hostile.name].report
    assert len(snapshot_files(sandbox / "dest" / hostile.name)) == 1
    assert stuck_gauges(metrics)[hostile.name] == 0.0


def test_a_descriptor_thief_leaks_no_descriptor_or_thread_and_delays_nothing(
    sandbox: Path, make_user: MakeUser, attack: Attack
) -> None:
    need(IS_ROOT, "needs root to run workers as real users")
    thief_user, other = make_user(), make_user()
    for user in (thief_user, other):
        create_state_db(user, size_mb=1)
    config = config_in(sandbox, timeout=30)
    _, out = attack(thief_user, "thief")
    run_pass(config, [thief_user, other])  # warm-up: imports, the reaper, logging
    fds, threads = open_fds(), threading.active_count()
    durations = []
    for _ in range(4):
        results = by_user(run_pass(config, [thief_user, other]))
        assert results[thief_user.name].report.ok, results[thief_user.name].report
        assert results[other.name].report.ok, results[other.name].report
        durations.append(results[thief_user.name].duration_s)
    stolen = [pid for pid, result in attacked(out) if result == "ok"]
    assert len(stolen) >= 3, attacked(out)  # the thief really held the pipes
    # Waiting for EOF on a stolen pipe would take the whole timeout (or forever).
    assert max(durations) < 10, durations
    assert open_fds() == fds, "descriptors leaked per pass"
    assert threading.active_count() == threads, "threads leaked per pass"
    assert len(snapshot_files(sandbox / "dest" / other.name)) == 5


@pytest.fixture
def stalled_userdata(sandbox: Path) -> Iterator[Mount]:
    """Mount a FUSE file system that never answers over a user's ~/.t3/userdata."""
    with fuse.stalled_userdata(sandbox) as mount:
        yield mount


@pytest.mark.usefixtures("fast_deadlines")
def test_a_worker_blocked_in_the_kernel_is_abandoned_and_nobody_waits(
    sandbox: Path,
    make_user: MakeUser,
    stalled_userdata: Mount,
) -> None:
    hostile, other = make_user(), make_user()
    for user in (hostile, other):
        create_state_db(user, size_mb=1)
    ready, server = stalled_userdata(hostile)
    config = config_in(sandbox)
    started = time.monotonic()
    results = by_user(run_pass(config, [hostile, other]))
    elapsed = time.monotonic() - started
    assert results[other.name].report.ok, results[other.name].report
    assert results[other.name].duration_s < 3, "the other user waited on the stalled one"
    assert len(snapshot_files(sandbox / "dest" / other.name)) == 1
    stuck = results[hostile.name].report
    assert (stuck.status, stuck.reason) == ("failed", "worker_stuck"), stuck
    assert Path(str(ready) + ".stalled").read_text().split()[0] == "state.sqlite"
    # Bounded: timeout 3 + slack 1 + SIGTERM grace 1 + SIGKILL grace 1 (+ start-up).
    assert elapsed < 3 + 1 + 1 + 1 + 3, elapsed
    (entry,) = [s for s in spawn.ABANDONED.stuck() if s.uid == hostile.uid]
    # Killed, and still there: a thread in uninterruptible sleep on the FUSE request.
    assert "D" in process_state(entry.pid), process_state(entry.pid)

    again = by_user(run_pass(config, [hostile, other]))
    assert again[hostile.name].report.reason == "worker_stuck"
    assert again[hostile.name].duration_s < 0.5
    assert again[other.name].report.ok

    # The file system's server goes: the request is aborted, the worker dies, is reaped.
    server.kill()
    server.wait(30)
    wait_until(lambda: spawn.ABANDONED.get(hostile.uid) is None, 15, "the stuck worker's reaping")
    assert process_state(entry.pid) == ""


@pytest.fixture
def small_dest(sandbox: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs as the destination (root's, 0755), unmounted afterwards."""
    need(IS_ROOT, "needs root to mount a tmpfs")
    dest = sandbox / "dest"
    dest.mkdir(mode=0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "t3bt-dest", str(dest)],
        capture_output=True,
        text=True,
    )
    need(mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield dest
    finally:
        subprocess.run(["umount", "-l", str(dest)], capture_output=True)


def test_a_destination_filled_from_one_users_dir_names_that_user(
    sandbox: Path, make_user: MakeUser, small_dest: Path
) -> None:
    hostile, other = make_user(), make_user()
    for user in (hostile, other):
        create_state_db(user, size_mb=1)
    config = replace(config_in(sandbox, timeout=60), dest=str(small_dest))
    config = replace(config, snapshot=replace(config.snapshot, concurrency=1))
    first = by_user(run_pass(config, [hostile, other]))
    assert first[hostile.name].report.ok and first[other.name].report.ok
    # The hostile user fills the shared destination from inside their own directory.
    filler = small_dest / hostile.name / "not-a-snapshot"
    fill = "import sys\nwith open(sys.argv[1], 'wb') as f:\n    while True: f.write(bytes(1 << 20))"
    run = subprocess.run(
        [PYTHON, "-I", "-c", fill, str(filler)], **as_user(hostile), capture_output=True
    )
    assert run.returncode != 0 and b"No space left" in run.stderr
    metrics = Metrics(CollectorRegistry())
    metrics.set_users([hostile.name, other.name])
    second = by_user(run_pass(config, [hostile, other], on_result=metrics.record_result))
    victim = second[other.name].report
    assert (victim.status, victim.reason) == ("failed", "disk_space"), victim
    # The failure points at the one responsible, with what is left.
    assert f"largest directories: {hostile.name} " in victim.message, victim.message
    assert f"free in {small_dest}" in victim.message
    sizes = {
        sample.labels["user"]: sample.value
        for family in metrics.collect()
        if family.name == "t3backup_user_dir_bytes"
        for sample in family.samples
    }
    assert sizes[hostile.name] > 40 * (1 << 20) > 4 * sizes[other.name], sizes
    space = destination_space(str(small_dest))
    assert space is not None and space[0] < 1 << 20 and 40 << 20 < space[1] <= 48 << 20
    # `list` names the largest directory too.
    config_file = json_config(sandbox, [hostile, other], dest=small_dest)
    listing = t3backupd(config_file, "list")
    assert listing.returncode == 0, listing.stderr
    assert f"largest directories: {hostile.name} " in listing.stdout, listing.stdout
    assert f"destination {small_dest}:" in listing.stdout


def passes_finished(running: Running) -> int:
    return running.log_text().count('"event": "pass finished"')


def test_the_daemon_stays_up_and_truthful_with_a_ptrace_holding_user(
    site: Site, attack: Attack
) -> None:
    """The real daemon (SIGUSR1 passes, real scrape): the other user's snapshot is
    published at once in both passes, the hostile user is worker_stuck, then skipped at
    once, and served again once the tracer goes. Real graces: timeout 2 s + 10 s slack +
    5 s SIGTERM grace + 5 s SIGKILL grace."""
    need(IS_ROOT, "needs root to run workers as real users")
    hostile, other = site.add_user(), site.add_user()
    site.write([hostile, other], snapshot="[snapshot]\ntimeout_seconds = 2\nconcurrency = 2\n")
    tracer, out = attack(hostile, "ptrace")
    with daemon(site) as running:
        started = time.monotonic()
        running.signal(signal.SIGUSR1)
        other_dir = site.dest / other.name
        wait_until(
            lambda: other_dir.is_dir() and len(snapshot_files(other_dir)) == 1,
            10,
            "other's snapshot",
        )
        published = time.monotonic() - started
        wait_until(lambda: passes_finished(running) == 1, 60, "the first pass")
        seized = attacked(out)
        if seized and seized[0][1] == "EPERM":
            pytest.skip("the kernel forbids same-uid ptrace here (Yama ptrace_scope or LSM)")
        text = scrape(site.port)
        assert sample(text, "t3backup_worker_stuck", user=hostile.name) == 1
        assert (
            sample(text, "t3backup_failures_total", user=hostile.name, reason="worker_stuck") == 1
        )
        assert sample(text, "t3backup_worker_stuck", user=other.name) == 0
        assert (sample(text, "t3backup_last_success_timestamp_seconds", user=other.name) or 0) > 0
        # Second pass: the hostile user is skipped at once, the other served.
        running.signal(signal.SIGUSR1)
        wait_until(lambda: passes_finished(running) == 2, 15, "the second pass")
        assert len(snapshot_files(site.dest / other.name)) == 2
        assert len(attacked(out)) == 1, "a second worker was started for a stuck user"
        text = scrape(site.port)
        assert (
            sample(text, "t3backup_failures_total", user=hostile.name, reason="worker_stuck") == 2
        )
        # The tracer goes; the worker is reaped; the next pass serves the user again.
        tracer.kill()
        tracer.wait(10)
        wait_until(lambda: "stuck worker reaped" in running.log_text(), 10, "the reaping")
        running.signal(signal.SIGUSR1)
        wait_until(lambda: passes_finished(running) == 3, 30, "the third pass")
        assert '"result": "2 ok"' in running.log_text()
        assert running.process.poll() is None
    assert published < 8, f"the other user's snapshot took {published:.1f}s"
    assert len(snapshot_files(site.dest / hostile.name)) == 1


EXHAUSTED = """
import json, os, resource, sys
from t3backupd.core.config import Config
from t3backupd.core.jobs import snapshot_spec
from t3backupd.core.usermap import User
from t3backupd.root.runner import run_user_job
dest, name, uid, gid, home = sys.argv[1:6]
user = User(name, int(uid), int(gid), home)
config = Config(dest=dest)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
report = run_user_job(config, user, snapshot_spec(config, user, None), None).report
for fd in held:
    os.close(fd)
print(json.dumps({"reason": report.reason, "message": report.message}))
"""


def test_descriptor_exhaustion_is_reported_as_what_it_is(
    sandbox: Path, make_user: MakeUser
) -> None:
    """No descriptor left in the daemon: the failure says so, never "is a symlink"."""
    need(IS_ROOT, "needs root to prepare a real user's directory")
    user = make_user()
    dest = sandbox / "dest"
    run = subprocess.run(
        [PYTHON, "-I", "-c", EXHAUSTED, str(dest), user.name, str(user.uid), str(user.gid),
         user.home],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert "Too many open files" in report["message"], report
    assert "symlink" not in report["message"] and report["reason"] != "permission", report
