"""Every kind of offsite child is stopped by a stop: the engine of an upload (the stream
worker has ended before it starts: root's spool) and the stream worker frozen mid-stream,
by Ctrl-C of `t3backupd offsite sync` and by the daemon's SIGTERM, the offsite
restore worker and the engine's download by Ctrl-C of `restore --from offsite`; for
restic and borg alike. Each time the engine is caught in the middle of its work and
SIGSTOPped (so the stop finds it busy, and frozen): nothing is left running, no temp
file, nothing committed (no snapshot, no borg checkpoint), the repository is consistent.
Real users, real repositories, the real CLI and daemon, real signals. Needs root.
The daemon starts no offsite restore worker (only the CLI restores): its stop procedure
is applied to one run in this process instead."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.daemon import STOP_GRACE, Site, start_daemon
from support.offsite import (
    BACKENDS,
    Backend,
    borg,
    borg_archives,
    command_line,
    engine_pids,
    need_borg,
    need_restic,
    offsite_section,
    password_file,
    restic,
    restic_snapshots,
)
from support.snapshots import parent_of, temps_in, worker_pids
from support.streams import StreamFreezer
from support.system import PYTHON, signal_and_wait, t3backupd

from t3backupd.core.config import load_config
from t3backupd.core.jobs import restore_spec
from t3backupd.core.protocol import Report
from t3backupd.core.usermap import User
from t3backupd.root.offsite import make_engine
from t3backupd.root.offsite.download import stream_restore
from t3backupd.root.offsite.process import STOP_GRACE_SECONDS
from t3backupd.root.spawn import ProcessTracker

pytestmark = [pytest.mark.root, pytest.mark.slow]

# The engine's stop, then the workers', each within its grace (they are quick here).
BOUND_SECONDS = 2 * STOP_GRACE_SECONDS + 5
# What an engine runs for: an upload, a download.
UPLOAD = {"restic": "backup", "borg": "create"}
DOWNLOAD = {"restic": "dump", "borg": "extract"}


@pytest.fixture(params=["local", "borg-local"], ids=["restic", "borg"])
def backend(request: pytest.FixtureRequest, sandbox: Path) -> Iterator[Backend]:
    if request.param == "local":
        need_restic()
    else:
        need_borg()
    with BACKENDS[request.param](sandbox) as value:
        yield value


def configure(site: Site, backend: Backend, user: User) -> tuple[Path, Path]:
    """The site's config with `[offsite]` on `backend` (initialised): (config, password)."""
    password = password_file(site.root)
    extra = offsite_section(backend, password, site.root / "cache", None)
    config = site.write([user], extra=extra)
    made = t3backupd(config, "offsite", "init")
    assert made.returncode == 0, made.stdout + made.stderr
    return config, password


def user_with_a_snapshot(site: Site, backend: Backend) -> tuple[User, Path, Path]:
    """A user with a 16 MB database and one snapshot on a configured site: (user, config,
    password)."""
    user = site.add_user(size_mb=16)
    config, password = configure(site, backend, user)
    snapshot = t3backupd(config, "snapshot", "--user", user.name)
    assert snapshot.returncode == 0, snapshot.stdout + snapshot.stderr
    return user, config, password


def catch_engine(parent: int, engine: str, action: str, alive: Callable[[], bool],
                 what: str) -> int:  # fmt: skip
    """The pid of `parent`'s engine process running `action`, SIGSTOPped the moment it
    is seen (so it is caught in the middle of its work); `alive` says whether what
    starts it still runs."""
    deadline = time.monotonic() + 120
    while True:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and parent_of(int(entry)) == parent:
                argv = command_line(int(entry))
                # restic itself, or python running borg (after nice and ionice's execs)
                names = {os.path.basename(arg) for arg in argv[:2]}
                if engine in names and action in argv:
                    os.kill(int(entry), signal.SIGSTOP)
                    return int(entry)
        assert alive(), f"{what} ended before its {engine} {action} was seen"
        assert time.monotonic() < deadline, f"no {engine} {action} under {what}"
        time.sleep(0.002)


def running(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is None


def interrupt(cli: subprocess.Popen[str]) -> tuple[str, float]:
    """SIGINT (Ctrl-C) to the CLI; its stderr and how long it took to exit."""
    _, stderr, elapsed = signal_and_wait(cli, signal.SIGINT, BOUND_SECONDS + 30)
    return stderr, elapsed


def start_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip


def assert_nothing_committed(backend: Backend, password: Path) -> None:
    """No copy (nor a borg checkpoint) and a consistent repository without stale locks."""
    if backend.engine == "borg":
        assert borg_archives(backend, password) == []
        checked = borg(backend, password, "check", backend.repository)
    else:
        assert restic_snapshots(backend, password) == []
        # A restic stopped within its first moments can leave its lock behind: restic
        # writes the lock file before it registers it for removal at exit (seen in a full
        # run: "locked by PID 7167 ... created 1.6s ago", that PID gone). Such a lock is
        # stale (its process is dead on this host): `restic unlock`, which each pass runs
        # first (Engine.unlock_stale), removes it and nothing else. A live process's
        # lock would survive that and fail the check below.
        unlocked = restic(backend, password, "unlock")
        assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
        assert restic(backend, password, "list", "locks").stdout.split() == []
        checked = restic(backend, password, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_ctrl_c_on_offsite_sync_stops_the_stream_worker_and_the_engine(
    site: Site, backend: Backend
) -> None:
    user, config, password = user_with_a_snapshot(site, backend)
    cli = start_cli(config, "offsite", "sync")
    engine = catch_engine(
        cli.pid, backend.engine, UPLOAD[backend.engine], running(cli), "offsite sync"
    )
    # The stream is in root's spool before the engine starts: its worker is gone.
    assert [pid for pid in worker_pids(user) if parent_of(pid) == cli.pid] == []
    stderr, elapsed = interrupt(cli)
    assert cli.returncode == 130, stderr[-2000:]
    assert "t3backupd: interrupted" in stderr.splitlines(), stderr[-2000:]
    assert "Traceback" not in stderr
    assert elapsed < BOUND_SECONDS, elapsed
    # Gone before the CLI exited: the engine (it was SIGSTOPped) and the stream worker.
    assert not Path(f"/proc/{engine}").exists()
    assert engine_pids(backend.repository) == []
    assert worker_pids(user) == []
    assert temps_in(site.dest / user.name) == []
    assert_nothing_committed(backend, password)


def test_ctrl_c_on_offsite_sync_stops_a_frozen_stream_worker_before_any_engine(
    site: Site, backend: Backend
) -> None:
    user, config, password = user_with_a_snapshot(site, backend)
    freezer = StreamFreezer(user, site.dest / user.name)
    with freezer.running():
        cli = start_cli(config, "offsite", "sync")
        deadline = time.monotonic() + 120
        while not freezer.frozen:
            assert cli.poll() is None and time.monotonic() < deadline, "no stream worker"
            time.sleep(0.01)
        assert engine_pids(backend.repository) == []  # the spool is not complete
        stderr, elapsed = interrupt(cli)
    assert cli.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert elapsed < BOUND_SECONDS, elapsed
    assert worker_pids(user) == []
    assert engine_pids(backend.repository) == []
    assert_nothing_committed(backend, password)


def test_daemon_stop_mid_upload_stops_the_stream_worker_and_the_engine(
    site: Site, backend: Backend
) -> None:
    user = site.add_user(size_mb=16)
    config, password = configure(site, backend, user)
    with start_daemon(config, site.port, site.root) as daemon:
        daemon.signal(signal.SIGUSR1)  # a pass: the snapshot, then its upload
        catch_engine(
            daemon.process.pid, backend.engine, UPLOAD[backend.engine],
            running(daemon.process), "the daemon",
        )  # fmt: skip
        assert [pid for pid in worker_pids(user) if parent_of(pid) == daemon.process.pid] == []
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(STOP_GRACE + 5) == 0, daemon.log_text()[-3000:]
        stopped_in = time.monotonic() - started
    assert stopped_in < BOUND_SECONDS, stopped_in
    assert engine_pids(backend.repository) == []
    assert worker_pids(user) == []
    assert temps_in(site.dest / user.name) == []
    assert_nothing_committed(backend, password)


def test_ctrl_c_on_restore_from_offsite_stops_the_restore_worker_and_the_engine(
    site: Site, backend: Backend
) -> None:
    user = site.add_user(size_mb=16)
    config, password = configure(site, backend, user)
    assert t3backupd(config, "snapshot", "--user", user.name).returncode == 0
    synced = t3backupd(config, "offsite", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    home = Path(user.home)
    target = home / "restored.sqlite"
    cli = start_cli(
        config, "restore", "--user", user.name, "--from", "offsite", "--to", str(target)
    )
    catch_engine(cli.pid, backend.engine, DOWNLOAD[backend.engine], running(cli), "restore")
    deadline = time.monotonic() + 60
    while not temps_in(home):  # the worker has its temp file, waiting for the stream
        assert cli.poll() is None and time.monotonic() < deadline, "no temp file"
        time.sleep(0.01)
    assert [pid for pid in worker_pids(user) if parent_of(pid) == cli.pid]
    stderr, elapsed = interrupt(cli)
    assert cli.returncode == 130, stderr[-2000:]
    assert "t3backupd: interrupted" in stderr.splitlines(), stderr[-2000:]
    assert "Traceback" not in stderr
    assert elapsed < BOUND_SECONDS, elapsed
    assert engine_pids(backend.repository) == []
    assert worker_pids(user) == []
    assert temps_in(home) == [] and not target.exists()
    # The download held no lock the next run would trip on.
    if backend.engine == "borg":
        checked = borg(backend, password, "check", backend.repository)
    else:
        checked = restic(backend, password, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_daemon_stop_reaches_the_offsite_restore_worker_and_the_engine(
    site: Site, backend: Backend
) -> None:
    """The daemon runs no offsite restore itself; its stop (the tracker's `terminate_all`,
    then waiting until nothing is tracked) still reaches an offsite restore's worker and
    engine the same way, as it would if one ran in the daemon."""
    user = site.add_user(size_mb=16)
    config_path, _ = configure(site, backend, user)
    assert t3backupd(config_path, "snapshot", "--user", user.name).returncode == 0
    synced = t3backupd(config_path, "offsite", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    config = load_config(config_path)
    tracker = ProcessTracker()
    engine = make_engine(config, tracker)
    [copy] = engine.snapshots(user.name)
    home = Path(user.home)
    target = home / "restored.sqlite"
    spec = restore_spec(config, user, copy.meta.name, target=str(target))
    reports: list[Report] = []
    restoring = threading.Thread(
        target=lambda: reports.append(stream_restore(engine, config, user, copy, spec, tracker))
    )
    restoring.start()
    try:
        catch_engine(
            os.getpid(), backend.engine, DOWNLOAD[backend.engine], restoring.is_alive,
            "stream_restore",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not temps_in(home):
            assert time.monotonic() < deadline, "no temp file"
            time.sleep(0.01)
        assert tracker.running() == 2  # the restore worker and the engine
        started = time.monotonic()
        while tracker.running():  # as the daemon's `_shutdown` does
            tracker.terminate_all()
            assert time.monotonic() - started < BOUND_SECONDS, "not stopped in time"
            time.sleep(0.2)
    finally:
        tracker.stop_all(grace=5, kill_grace=5)
        restoring.join(60)
    [report] = reports
    assert not report.ok, report
    assert engine_pids(backend.repository) == []
    assert worker_pids(user) == []
    assert temps_in(home) == [] and not target.exists()


def test_ctrl_c_on_offsite_check_stops_the_engine_it_waits_for(
    site: Site, backend: Backend
) -> None:
    """An engine the CLI's main thread waits for itself (`offsite check`): stopped with
    its own signal as the Ctrl-C unwinds, leaving no lock behind."""
    user = site.add_user(size_mb=1)
    config, password = configure(site, backend, user)
    cli = start_cli(config, "offsite", "check")
    engine = catch_engine(cli.pid, backend.engine, "check", running(cli), "offsite check")
    stderr, elapsed = interrupt(cli)
    assert cli.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert elapsed < BOUND_SECONDS, elapsed
    assert not Path(f"/proc/{engine}").exists()
    assert engine_pids(backend.repository) == []
    assert_nothing_committed(backend, password)
