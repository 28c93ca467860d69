"""What systemd does to the daemon, reproduced on the host without a systemd manager:
`systemctl kill` signalling every process of the unit, the journal stream on stderr,
`systemctl stop` during a pass, and tmpfiles.d creating dest on a fresh host.
(tests/vm runs the same under a real systemd: `make test-systemd`.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from support import need
from support.daemon import STOP_GRACE, Site, cli_snapshot, daemon
from support.system import IS_ROOT, PYTHON, run_as, snapshot_files

from t3backupd.core.config import load_config
from t3backupd.core.jobs import snapshot_spec
from t3backupd.core.protocol import STOPPED
from t3backupd.core.usermap import User
from t3backupd.root.runner import TIMEOUT_SLACK_SECONDS
from t3backupd.root.spawn import Child, ProcessTracker, run_worker

REPO = Path(__file__).resolve().parents[2]
TMPFILES = REPO / "packaging" / "systemd" / "t3backupd.tmpfiles"
UNIT = REPO / "packaging" / "systemd" / "t3backupd.service"


def uid_of(pid: int) -> int | None:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def pids_of(uid: int) -> list[int]:
    return [
        int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and uid_of(int(e.name)) == uid
    ]


@contextmanager
def signalling(uid: int, signals: tuple[int, ...], stop: threading.Event | None = None,
               kill_first: bool = False) -> Iterator[list[int]]:  # fmt: skip
    """Send `signals` to every process of `uid` from the moment it appears, every few ms,
    as `systemctl kill -s ...` would to every process of the unit. Yields pids signalled."""
    seen: list[int] = []
    done = stop or threading.Event()

    def loop() -> None:
        while not done.is_set():
            for pid in pids_of(uid):
                if pid not in seen:
                    seen.append(pid)
                for signum in signals:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signum)
            time.sleep(0.001 if not seen else 0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(5)


def big_database(site: Site, user: User, size_mb: int) -> None:
    path = Path(site.source.format(user=user.name, home=user.home))
    run_as(user, [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "create", str(path),
                  "--size-mb", str(size_mb), "--force"])  # fmt: skip


# --- fix 2: workers ignore the daemon's signals -------------------------------------------


def test_workers_survive_sighup_and_sigusr1_from_their_first_instant(site: Site) -> None:
    need(IS_ROOT, "needs root: the worker runs as another user")
    user = site.add_user()
    big_database(site, user, 40)
    config = load_config(site.write([user], snapshot='[snapshot]\nverify = "full"\n'))
    spec = snapshot_spec(config, user, None)
    (site.dest / user.name).mkdir(parents=True, mode=0o700)
    os.chown(site.dest / user.name, user.uid, user.gid)
    with signalling(user.uid, (signal.SIGHUP, signal.SIGUSR1)) as signalled:
        report = run_worker(spec, user, spec.timeout_seconds + TIMEOUT_SLACK_SECONDS)
    assert signalled, "the worker was never seen, so never signalled"
    assert report.status == "ok", report
    assert report.snapshot is not None
    assert snapshot_files(site.dest / user.name) == [report.snapshot.name]


# --- fix 4: a stop is a stop -----------------------------------------------------------------


class StopsOnceLaunched(ProcessTracker):
    """A stop that begins right after the worker is started (none starts after a stop)."""

    def launch(
        self,
        start: Callable[[], subprocess.Popen[bytes]],
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> Child | None:
        child = super().launch(start, stop_signal)
        self.stopping.set()
        return child


def test_worker_killed_before_its_handler_while_stopping_counts_as_stopped(site: Site) -> None:
    need(IS_ROOT, "needs root: the worker runs as another user")
    user = site.add_user()
    config = load_config(site.write([user]))
    spec = snapshot_spec(config, user, None)
    (site.dest / user.name).mkdir(parents=True, mode=0o700)
    os.chown(site.dest / user.name, user.uid, user.gid)
    tracker = StopsOnceLaunched()  # the daemon stops; its SIGKILL/SIGTERM lands at once
    with signalling(user.uid, (signal.SIGKILL,)) as signalled:
        report = run_worker(spec, user, 60, tracker)
    assert signalled
    assert report.status == STOPPED, report
    assert report.reason is None
    # The same death while not stopping is a crash, as before.
    with signalling(user.uid, (signal.SIGKILL,)):
        crashed = run_worker(spec, user, 60, ProcessTracker())
    assert (crashed.status, crashed.reason) == ("failed", "worker_crashed"), crashed


def test_sigterm_during_a_pass_logs_the_user_and_the_pass_as_stopped_not_failed(
    site: Site,
) -> None:
    user = site.add_user()
    site.write([user], snapshot='[snapshot]\nmethod = "vacuum"\nverify = "full"\n')
    cli_snapshot(site)
    big_database(site, user, 200)
    user_dir = site.dest / user.name
    with daemon(site) as running:
        running.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while not any(path.name.startswith(".t3backupd-") for path in user_dir.iterdir()):
            assert time.monotonic() < deadline, "the snapshot never started"
            time.sleep(0.005)
        running.signal(signal.SIGTERM)
        assert running.process.wait(STOP_GRACE + 5) == 0, running.log_text()
    events = [json.loads(line) for line in running.log_text().splitlines() if line.startswith("{")]
    snapshot = [e for e in events if e.get("event") == "snapshot" and e.get("user") == user.name]
    assert [(e["status"], e["level"]) for e in snapshot] == [("stopped", "info")], snapshot
    assert [e for e in events if e.get("level") == "error"] == []
    passes = [e for e in events if e.get("event") in ("pass finished", "pass stopped")]
    assert [(e["event"], e["level"], e["result"]) for e in passes] == [
        ("pass stopped", "info", "1 stopped")
    ]


# --- fix 3: priorities on the journal stream ---------------------------------------------


def journal_env(path: Path) -> str:
    info = os.stat(path)
    return f"{info.st_dev}:{info.st_ino}"


def test_daemon_lines_carry_syslog_priority_only_on_the_journal_stream(site: Site) -> None:
    site.write([], extra="")  # a usermap serving nobody: a warning at start
    log = site.root / "daemon.log"
    log.write_bytes(b"")  # start_daemon reopens this inode: JOURNAL_STREAM can name it
    os.environ["JOURNAL_STREAM"] = journal_env(log)
    try:
        with daemon(site) as running:
            (site.root / "usermap").unlink()  # a reload refused: an error
            mark = len(running.notify.messages)
            running.signal(signal.SIGHUP)
            running.notify.wait_field("READY", "1", after=mark)
    finally:
        del os.environ["JOURNAL_STREAM"]
    lines = [line for line in running.log_text().splitlines() if line]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    by_level = {json.loads(line[3:])["level"]: line[:3] for line in lines}
    assert by_level["error"] == "<3>"  # reload refused: usermap unreadable
    assert by_level["warning"] == "<4>"  # usermap serves no user
    assert by_level["info"] == "<6>"
    site.write([], extra="")
    # Inherited JOURNAL_STREAM, stderr elsewhere (a redirect): no prefixes.
    other = site.root / "other"
    other.write_bytes(b"")
    os.environ["JOURNAL_STREAM"] = journal_env(other)
    try:
        with daemon(site) as running:
            pass
    finally:
        del os.environ["JOURNAL_STREAM"]
    lines = [line for line in running.log_text().splitlines() if line]
    assert lines and all(line.startswith("{") for line in lines), lines


def test_a_start_refused_for_a_missing_usermap_is_one_line_at_err_on_the_journal(
    site: Site,
) -> None:
    site.write([], extra="")
    (site.root / "usermap").unlink()
    log = site.root / "daemon.log"
    log.write_bytes(b"")
    os.environ["JOURNAL_STREAM"] = journal_env(log)
    try:
        with daemon(site, wait_ready=False) as running:
            assert running.process.wait(60) == 2
    finally:
        del os.environ["JOURNAL_STREAM"]
    assert running.log_text().splitlines() == [
        f"<3>t3backupd: {site.root / 'usermap'}: usermap unreadable: No such file or directory"
    ]


# --- fix 1: dest on a fresh host ----------------------------------------------------------


def test_tmpfiles_creates_dest_root_owned_0755_on_a_fresh_root(tmp_path: Path) -> None:
    tool = shutil.which("systemd-tmpfiles")
    need(tool is not None, "needs systemd-tmpfiles (Debian package systemd)")
    need(IS_ROOT, "needs root: tmpfiles sets the owner")
    assert tool is not None
    root = tmp_path / "fresh"
    root.mkdir()
    os.umask(0o077)
    try:
        result = subprocess.run([tool, f"--root={root}", "--create", str(TMPFILES)],
                                capture_output=True, text=True)  # fmt: skip
    finally:
        os.umask(0o022)
    assert result.returncode == 0, result.stderr
    info = os.lstat(root / "var/backups/t3-state")
    assert stat.S_ISDIR(info.st_mode)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o755, 0, 0)


def test_the_unit_writes_where_tmpfiles_creates_and_has_no_pre_start_mkdir() -> None:
    unit = UNIT.read_text()
    created = [line.split()[1] for line in TMPFILES.read_text().splitlines()
               if line.startswith("d ")]  # fmt: skip
    writable = [line.split("=", 1)[1].lstrip("-") for line in unit.splitlines()
                if line.startswith("ReadWritePaths=")]  # fmt: skip
    assert created == ["/var/backups/t3-state"]
    assert created[0] in writable
    assert not [line for line in unit.splitlines() if line.startswith("ExecStartPre=")]


def test_debian_changelog_version_is_the_package_version() -> None:
    changelog = (REPO / "packaging" / "debian" / "changelog").read_text().splitlines()[0]
    pyproject = (REPO / "pyproject.toml").read_text()
    version = next(line.split('"')[1] for line in pyproject.splitlines()
                   if line.startswith("version = "))  # fmt: skip
    assert changelog.startswith(f"t3backupd ({version}) ")
