"""Parent side of the worker protocol: prepare a user's backup dir, run a worker as
that user, and read its report strictly.

The parent runs as root and never opens a path the user controls: it only creates
`<dest>` and `<dest>/<user>` (never following links) and talks to the worker over pipes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import IO

from t3backupd.core.protocol import JobSpec, Report, ReportError, failed, parse_report, printable
from t3backupd.core.usermap import User

STOP_GRACE_SECONDS = 5.0
STDERR_TAIL_BYTES = 4096
WORKER_MODULE = "t3backupd.worker"


class DirectoryRefused(Exception):
    """`<dest>` or `<dest>/<user>` is not safe to use (symlink, wrong owner...)."""


def running_as_root() -> bool:
    return os.geteuid() == 0


def ensure_dest_root(dest: str) -> None:
    """Create `<dest>` (0755, owned by us) if missing and check it is safe.

    Checked through a descriptor opened O_NOFOLLOW (no window for a swapped-in link).
    Raises DirectoryRefused if it is a symlink, not a directory, not owned by us, or
    writable by group or others (anyone who can write there could plant links for us).
    """
    created = False
    if not os.path.lexists(dest):
        try:
            os.makedirs(os.path.dirname(dest.rstrip("/")) or "/", mode=0o755, exist_ok=True)
            os.mkdir(dest, 0o700)  # private until checked; 0755 below
            created = True
        except FileExistsError:
            pass
        except OSError as error:
            raise DirectoryRefused(f"cannot create {dest}: {error.strerror}") from None
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise DirectoryRefused(f"{dest} is not a directory (or is a symlink)") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise DirectoryRefused(f"{dest} is owned by uid {info.st_uid}, not by us")
        if created:
            # <dest> is 0755 (workers traverse it); mkdir honoured the umask.
            os.fchmod(fd, 0o755)
            info = os.fstat(fd)
        if info.st_mode & 0o022:
            raise DirectoryRefused(f"{dest} is writable by group or others")
    finally:
        os.close(fd)


def prepare_user_dir(dest: str, user: User) -> str:
    """Create `<dest>/<user>` as user:user 0700, or check an existing one.

    Never follows a link: the directory is opened O_NOFOLLOW relative to `<dest>` and
    changed through that descriptor. Returns the path. Raises DirectoryRefused.
    """
    ensure_dest_root(dest)
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with suppress(FileExistsError):
            os.mkdir(user.name, 0o700, dir_fd=dest_fd)
        try:
            fd = os.open(
                user.name,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=dest_fd,
            )
        except OSError as error:
            raise DirectoryRefused(
                f"{dest}/{user.name} is not a plain directory ({error.strerror})"
            ) from None
        try:
            info = os.fstat(fd)
            if info.st_uid not in (user.uid, os.geteuid()):
                raise DirectoryRefused(
                    f"{dest}/{user.name} is owned by uid {info.st_uid}, not {user.name}"
                )
            if info.st_uid == os.geteuid():
                # Ours (just made, or left by a crash before chown): mode first, while we
                # still own it, then hand it over. A user-owned directory's mode is set
                # by its worker (its owner), so the daemon needs no CAP_FOWNER.
                os.fchmod(fd, 0o700)
                if running_as_root():
                    os.fchown(fd, user.uid, user.gid)
        finally:
            os.close(fd)
    finally:
        os.close(dest_fd)
    return os.path.join(dest, user.name)


def worker_environment(user: User) -> dict[str, str]:
    """A minimal environment: no NOTIFY_SOCKET / WATCHDOG_* / PYTHON* from the daemon."""
    return {
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }


class ProcessTracker:
    """Running workers, so a stop request can signal every worker's process group."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()
        self.stopping = threading.Event()

    @contextmanager
    def track(self, process: subprocess.Popen[bytes]) -> Iterator[None]:
        with self._lock:
            self._processes.add(process)
        try:
            yield
        finally:
            with self._lock:
                self._processes.discard(process)

    def running(self) -> int:
        with self._lock:
            return len(self._processes)

    def terminate_all(self) -> None:
        """Ask every running worker group to stop (they remove their temp files)."""
        self.stopping.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            _stop_signal(process)


def _stop_signal(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's group, then SIGCONT: a worker its user has SIGSTOPped
    would otherwise never act on the SIGTERM."""
    _signal_group(process, signal.SIGTERM)
    _signal_group(process, signal.SIGCONT)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the worker's group: SIGTERM (+SIGCONT), a grace, then SIGKILL; reap it."""
    _stop_signal(process)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _read_capped(stream: IO[bytes], limit: int, sink: list[bytes]) -> None:
    """Read up to `limit`+1 bytes (enough to know the cap was exceeded), drain the rest."""
    data = stream.read(limit + 1)
    sink.append(data)
    while stream.read(1 << 16):
        pass


def _tail(data: bytes) -> str:
    text = data[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return printable(last)[:300]


def run_worker(
    spec: JobSpec,
    user: User,
    timeout: float,
    tracker: ProcessTracker | None = None,
) -> Report:
    """Run one worker as `user` and return its (strictly parsed) report.

    On timeout the worker's process group gets SIGTERM, then SIGKILL after a grace.
    Never raises for worker misbehaviour: that is a `worker_crashed` report.
    """
    command = [sys.executable, "-I", "-m", WORKER_MODULE]
    # As root: the user's uid, primary gid and *their own* supplementary groups (without
    # extra_groups, root's would be kept). Not root: no switch is possible or needed.
    as_root = running_as_root()
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=worker_environment(user),
            umask=0o077,
            process_group=0,
            close_fds=True,
            user=user.uid if as_root else None,
            group=user.gid if as_root else None,
            extra_groups=os.getgrouplist(user.name, user.gid) if as_root else None,
        )
    except OSError as error:
        return failed(spec.action, "worker_crashed", f"cannot start worker: {error}")
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise RuntimeError("Popen without pipes")  # cannot happen: all three are PIPE
    with tracker.track(process) if tracker is not None else nullcontext():
        # Daemon threads: a pipe held open by something that escaped the worker's
        # group must not keep this process from exiting.
        readers = [
            threading.Thread(
                target=_read_capped, args=(process.stdout, 1 << 20, stdout), daemon=True
            ),
            threading.Thread(
                target=_read_capped,
                args=(process.stderr, STDERR_TAIL_BYTES * 16, stderr),
                daemon=True,
            ),
        ]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            with suppress(BrokenPipeError):
                process.stdin.write(spec.to_json())
                process.stdin.close()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop_group(process)
        except BaseException:
            # Ctrl-C (or any error) while waiting: the worker must not run on unwatched.
            _stop_group(process)
            raise
        finally:
            # Anything left in the group (a grandchild) must not outlive its worker.
            _signal_group(process, signal.SIGKILL)
        for reader in readers:
            reader.join(STOP_GRACE_SECONDS)
    duration = time.monotonic() - started
    raw = stdout[0] if stdout else b""
    if timed_out:
        return failed(
            spec.action, "timeout", f"no result after {timeout:.0f}s", duration_s=duration
        )
    try:
        return parse_report(raw, spec.action)
    except ReportError as error:
        detail = _tail(stderr[0] if stderr else b"")
        message = f"invalid report ({error}); exit status {process.returncode}"
        if detail:
            message += f"; stderr: {detail}"
        return failed(spec.action, "worker_crashed", message, duration_s=duration)
