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
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.system import (
    PYTHON,
    create_state_db,
    log_events,
    make_sandbox,
    run_as,
    sha256sum_check,
    snapshot_files,
    t3backupd,
    user_factory,
    write_config,
)

from t3backupd.naming import TEMP_PREFIX, TEMP_SUFFIX, format_name, parse_name
from t3backupd.protocol import FAILURE_REASONS
from t3backupd.usermap import User

START_TIMEOUT = 30.0
PASS_TIMEOUT = 90.0
FAR_FUTURE_CRON = "0 0 29 2 *"  # leap days only: last fired 2024-02-29, never during a test


# --- a NOTIFY_SOCKET of our own, /metrics scrapes ---------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


@dataclass
class NotifyListener:
    """A datagram socket standing in for systemd's; on READY=1 it scrapes /metrics at
    once (from its own thread), so the values seen are those the daemon was ready with."""

    path: Path
    port: int
    ready_scrape: str | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        self._socket.settimeout(0.1)
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if "READY=1" in data.decode().splitlines() and not self._ready.is_set():
                self.ready_scrape = scrape(self.port)
                self._ready.set()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        assert self._ready.wait(timeout), "no READY=1"
        assert self.ready_scrape is not None
        return self.ready_scrape

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._socket.close()


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    notify: NotifyListener
    log: Path


@contextmanager
def daemon(config: Path, port: int, name: str) -> Iterator[Running]:
    """The real `python -I -m t3backupd -c CONFIG run`; SIGKILLed afterwards if alive."""
    notify = NotifyListener(config.parent / f"notify-{name}", port)
    log = config.parent / f"daemon-{name}.log"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("WATCHDOG_", "T3_BACKUP_", "NOTIFY_"))}  # fmt: skip
    env.update({"NOTIFY_SOCKET": str(notify.path), "T3BACKUPD_CONFIG": ""})
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "run"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
        )
    try:
        yield Running(process, notify, log)
    except BaseException:
        print(f"--- daemon {name} log ---\n{log.read_text(errors='replace')}")
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()


# --- the user's files ----------------------------------------------------------------------


def temps_in(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX))


def snapshot_time(name: str) -> float:
    parsed = parse_name(name)
    assert parsed is not None, name
    return parsed.time.timestamp()


def assert_verified(user: User, directory: Path) -> list[str]:
    """Every published snapshot passes the real `sha256sum -c`. Returns the names."""
    names = snapshot_files(directory)
    for name in names:
        check = sha256sum_check(user, directory, name)
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"
    return names


def backdate(user: User, directory: Path, name: str, when: datetime) -> str:
    """Rename a snapshot (and its checksum line) as if taken at `when`, as the user."""
    new = format_name(when, None)
    script = 'cd "$1" && mv -- "$2" "$3" && rm -- "$2.sha256" && sha256sum -- "$3" > "$3.sha256"'
    run_as(user, ["sh", "-c", script, "sh", str(directory), name, new])
    return new


def worker_pids(user: User) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-u", str(user.uid), "-f", "t3backupd.worker"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def wait_for_partial_copy(directory: Path, source_bytes: int, timeout: float = 60) -> str:
    """The name of the worker's temp copy once it is part-way written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if directory.is_dir():
            for name in temps_in(directory):
                if not name.endswith(TEMP_SUFFIX):
                    continue
                try:
                    size = os.lstat(directory / name).st_size
                except FileNotFoundError:
                    continue
                if 0 < size < source_bytes // 2:
                    return name
        time.sleep(0.001)
    raise AssertionError("never saw the copy in progress")


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
        '[log]\nformat = "json"\n'
    )
    return write_config(directory, [user], directory / "dest", extra=extra)


def assert_no_failures(text: str, user: User) -> None:
    for reason in FAILURE_REASONS:
        assert not sample(text, "t3backup_failures_total", user=user.name, reason=reason), reason


@dataclass
class BigSource:
    user: User
    source_bytes: int
    sandbox: Path


@pytest.fixture(scope="module")
def big_source() -> Iterator[BigSource]:
    """One user with a ~300 MB database, made once: copying it takes long enough to kill."""
    with make_sandbox() as sandbox, user_factory() as factory:
        user = factory()
        database = create_state_db(user, size_mb=300, seed=4)
        yield BigSource(user, database.stat().st_size, sandbox)


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_daemon_killed_mid_pass_restarts_cleans_up_catches_up_and_restores_metrics(
    big_source: BigSource,
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
    with daemon(config, port, "crashed") as crashed:
        crashed.notify.wait_ready()
        temp = wait_for_partial_copy(user_dir, source_bytes)
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

    # 2. Restarted: metrics from disk at READY, then the catch-up pass heals.
    with daemon(config, port, "restarted") as restarted:
        at_ready = restarted.notify.wait_ready()
        assert sample(at_ready, "t3backup_last_success_timestamp_seconds", user=user.name) == (
            snapshot_time(earlier)
        )
        assert sample(at_ready, "t3backup_snapshots", user=user.name) == 1
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

        restarted.process.send_signal(signal.SIGTERM)
        assert restarted.process.wait(60) == 0
    events = log_events(restarted.log.read_text(errors="replace"))
    assert any(event.get("event", "").startswith("catching up") for event in events)
    passes = [event.get("trigger") for event in events if event.get("event") == "pass started"]
    assert passes == ["catch-up"]
    outcomes = [event.get("status") for event in events if event.get("event") == "snapshot"]
    assert outcomes == ["ok"]


@pytest.mark.root
@pytest.mark.slow
def test_daemon_killed_alone_leaves_its_worker_to_finish_a_complete_snapshot(
    big_source: BigSource,
) -> None:
    user, source_bytes = big_source.user, big_source.source_bytes
    port = free_port()
    config = config_in(big_source.sandbox / "orphan", user, port, FAR_FUTURE_CRON)
    user_dir = config.parent / "dest" / user.name

    # No snapshot yet, so the daemon catches up at start; only the daemon is killed.
    with daemon(config, port, "crashed") as crashed:
        crashed.notify.wait_ready()
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
    with daemon(config, port, "restarted") as restarted:
        at_ready = restarted.notify.wait_ready()
        assert sample(at_ready, "t3backup_last_success_timestamp_seconds", user=user.name) == (
            snapshot_time(name)
        )
        assert sample(at_ready, "t3backup_snapshots", user=user.name) == 1
        restarted.process.send_signal(signal.SIGTERM)
        assert restarted.process.wait(60) == 0
    events = log_events(restarted.log.read_text(errors="replace"))
    assert not [event for event in events if event.get("event") == "pass started"]
