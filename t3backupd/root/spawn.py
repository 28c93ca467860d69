"""Parent side of the worker protocol: prepare a user's backup dir, run a worker as
that user, and read its report strictly.

The parent runs as root and never opens a path the user controls: it only creates
`<dest>` and `<dest>/<user>` (never following links) and talks to the worker over pipes.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import IO, Any

from t3backupd.core.protocol import (
    STOPPED,
    Action,
    FailureReason,
    JobSpec,
    Report,
    ReportError,
    failed,
    parse_report,
    printable,
)
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger

# SIGTERM -> SIGKILL, then SIGKILL -> abandoned; an exited worker not reapable within
# REAP_GRACE is abandoned too. Abandoned workers are polled every REAP_POLL_SECONDS.
STOP_GRACE_SECONDS = 5.0
KILL_GRACE_SECONDS = 5.0
REAP_GRACE_SECONDS = 1.0
REAP_POLL_SECONDS = 1.0
MAX_REPORT_BYTES = 1 << 20
# The daemon's own signals (reload, pass). `systemctl kill` sends them to every process of
# the unit: a worker is spawned with them blocked and ignores them before anything else.
DAEMON_ONLY_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1})

STDERR_TAIL_BYTES = 4096
WORKER_MODULE = "t3backupd.worker"


class DirectoryRefused(Exception):
    """`<dest>` or `<dest>/<user>` is not safe to use (symlink, wrong owner...), or could
    not be made; `reason` is the failure reason it is reported as."""

    def __init__(self, message: str, reason: FailureReason = "permission") -> None:
        super().__init__(message)
        self.reason: FailureReason = reason


def os_error_reason(error: OSError) -> FailureReason:
    """The failure reason an OSError of the root side is reported as: what it is.

    No space/quota is `disk_space`; access, links and read-only file systems are
    `permission`; anything else (no descriptor left, no memory, I/O error) is the
    daemon's own failure to run the worker, `worker_crashed`, with the error's text.
    """
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_space"
    if error.errno in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENOTDIR, errno.EROFS):
        return "permission"
    return "worker_crashed"


def _refused(what: str, error: OSError) -> DirectoryRefused:
    """A DirectoryRefused that names the error as it is (never 'is a symlink' for EMFILE)."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        text = f"{what} is not a directory (or is a symlink)"
    else:
        text = f"{what}: {error.strerror or error}"
    return DirectoryRefused(text, os_error_reason(error))


def running_as_root() -> bool:
    return os.geteuid() == 0


def _make_parents(path: str) -> None:
    """Create the missing parents of `path` 0755 whatever the umask (the daemon runs
    with UMask=0077: a 0700 parent would lock every worker out of `<dest>`)."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    missing: list[str] = []
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent) or "/"
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)


def ensure_dest_root(dest: str) -> None:
    """Create `<dest>` (0755, owned by us; missing parents 0755) and check it is safe.

    Checked through a descriptor opened O_NOFOLLOW (no window for a swapped-in link).
    Raises DirectoryRefused if it is a symlink, not a directory, not owned by us, or
    writable by group or others (anyone who can write there could plant links for us),
    or if it cannot be opened or made (the error as it is).
    """
    created = False
    if not os.path.lexists(dest):
        try:
            _make_parents(dest)
            os.mkdir(dest, 0o700)  # private until checked; 0755 below
            created = True
        except FileExistsError:
            pass
        except OSError as error:
            raise _refused(f"cannot create {dest}", error) from None
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise _refused(dest, error) from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise DirectoryRefused(f"{dest} is owned by uid {info.st_uid}, not by us")
        if created or stat.S_IMODE(info.st_mode) == 0o700:
            # <dest> is 0755 (workers traverse it); mkdir honoured the umask. 0700 is how we
            # create it: a run that ended between the mkdir and this chmod left it so.
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
    try:
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise _refused(dest, error) from None
    try:
        try:
            os.mkdir(user.name, 0o700, dir_fd=dest_fd)
        except FileExistsError:
            pass
        except OSError as error:
            raise _refused(f"cannot create {dest}/{user.name}", error) from None
        try:
            fd = os.open(
                user.name,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=dest_fd,
            )
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DirectoryRefused(
                    f"{dest}/{user.name} is not a plain directory ({error.strerror})"
                ) from None
            raise _refused(f"{dest}/{user.name}", error) from None
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


class Child:
    """One process started by `launch`: its own process group (its pid is the group's
    id), a pidfd to wait on, and the signal that stops it cleanly (SIGTERM for a worker;
    an engine names its own).

    Signalled only through `signal`, which never reaches a reaped process: the check and
    the kill are made under the lock the reap is made under, so the number can never
    belong to someone else by then. Waits are bounded and made on the pidfd (short
    waitid polls, which never reap, if pidfd_open failed, e.g. no descriptor left).
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stop_signal: signal.Signals,
        tracker: ProcessTracker | None = None,
    ) -> None:
        self.popen = popen
        self._tracker = tracker
        self.pid = popen.pid
        self.stop_signal = stop_signal
        self._lock = threading.Lock()
        self._stop_sent = False
        try:
            self.pidfd: int | None = os.pidfd_open(popen.pid)
        except OSError:
            self.pidfd = None  # e.g. EMFILE: waits fall back to short waitid polls

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: the signal that ended it)."""
        return self.popen.returncode

    def signal(self, signum: int) -> bool:
        """Send `signum` to the child's whole group. Never once it is reaped: False then."""
        with self._lock:
            if self.popen.returncode is not None:
                return False
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)
            return True

    def request_stop(self) -> None:
        """Its stop signal (once: a second SIGTERM could cut borg's own clean-up short),
        then SIGCONT every time (a child its user has SIGSTOPped would otherwise never
        act on it)."""
        with self._lock:
            first, self._stop_sent = not self._stop_sent, True
        if first:
            self.signal(self.stop_signal)
        self.signal(signal.SIGCONT)

    def exited(self, seconds: float) -> bool:
        """True once the child has exited (a zombie counts), within `seconds`. For its
        owner (the thread that `release`s it); anyone else asks `exited_now`."""
        deadline = time.monotonic() + seconds
        while True:
            if self.pidfd is not None:
                remaining = max(0.0, deadline - time.monotonic())
                with suppress(InterruptedError):
                    ready, _, _ = select.select([self.pidfd], [], [], remaining)
                    if ready:
                        return True
            elif self.exited_now():
                return True
            if self.popen.returncode is not None:
                return True  # reaped meanwhile by a stop (`stop_all`)
            if time.monotonic() >= deadline:
                return False
            if self.pidfd is None:
                time.sleep(REAP_POLL_SECONDS / 10)

    def exited_now(self) -> bool:
        """True if the child has exited; never waits, never reaps (so `finish` can still
        reach what is left of its group). Safe from any thread: made under the lock
        `release` closes the pidfd under and the reap is made under."""
        with self._lock:
            if self.popen.returncode is not None:
                return True
            if self.pidfd is not None:
                ready, _, _ = select.select([self.pidfd], [], [], 0)
                return bool(ready)
            try:
                # Without a pidfd: waitid's WNOWAIT looks without collecting the status.
                seen = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True  # reaped outside `Child` (cannot happen in our code)
            return seen is not None

    def _poll(self) -> int | None:
        with self._lock:
            return self.popen.poll()

    def finish(self, seconds: float | None = None) -> bool:
        """For an exited child: SIGKILL what is left of its group (grandchildren), then
        collect its status within `seconds` (REAP_GRACE_SECONDS). False if it cannot be
        reaped (a zombie its user holds by ptrace is only released when the tracer lets
        go)."""
        self.signal(signal.SIGKILL)
        deadline = time.monotonic() + (REAP_GRACE_SECONDS if seconds is None else seconds)
        while self._poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def wait(self, seconds: float) -> int | None:
        """The exit status if the child ends within `seconds` (then reaped, its group
        killed); None if it is still running (it is left running: see `stop`)."""
        if self.exited(seconds) and self.finish():
            return self.returncode
        return None

    def stop(self, grace: float | None = None, kill_grace: float | None = None) -> bool:
        """Its stop signal (+SIGCONT) to the group, up to `grace` (STOP_GRACE_SECONDS);
        SIGKILL, up to `kill_grace` (KILL_GRACE_SECONDS); then reaped. False if it
        outlived all of it (abandon it): it is never waited for longer."""
        self.request_stop()
        if not self.exited(STOP_GRACE_SECONDS if grace is None else grace):
            self.signal(signal.SIGKILL)
            if not self.exited(KILL_GRACE_SECONDS if kill_grace is None else kill_grace):
                return False
        return self.finish()

    def release(self) -> None:
        """The owner is done with it (reaped or abandoned): its pidfd is closed and the
        tracker forgets it (`stop_all` stops waiting for it)."""
        with self._lock:
            pidfd, self.pidfd = self.pidfd, None
        if pidfd is not None:
            os.close(pidfd)
        if self._tracker is not None:
            self._tracker.forget(self)


class ProcessTracker:
    """Running children (workers and engines), so a stop reaches every one's group with
    its own stop signal.

    A stop is final: once `stopping` is set nothing more is launched, and `stop_all`
    waits (bounded) until every tracked child has exited, and reaps it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Notified whenever a child leaves the set (its owner is done with it).
        self._changed = threading.Condition(self._lock)
        self._children: set[Child] = set()
        self.stopping = threading.Event()

    def forget(self, child: Child) -> None:
        """`child` is reaped (or abandoned): no longer signalled, no longer waited for."""
        with self._lock:
            self._children.discard(child)
            self._changed.notify_all()

    def launch(
        self,
        start: Callable[[], subprocess.Popen[bytes]],
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> Child | None:
        """Start a process and track it in one step, under the lock `terminate_all` takes,
        so a stop can never fall between the two and miss it (a CLI's Ctrl-C while the
        runner thread is between Popen and tracking). None, starting nothing, once a stop
        has begun: `terminate_all` sets `stopping` before it takes the lock, so a process
        is either started and signalled, or never started. Only `spawn.launch` calls
        this; the caller `forget`s the child once it is done with it."""
        with self._lock:
            if self.stopping.is_set():
                return None
            child = Child(start(), stop_signal, self)
            self._children.add(child)
        return child

    def running(self) -> int:
        with self._lock:
            return len(self._children)

    def terminate_all(self) -> None:
        """Ask every running child's group to stop, each with its own stop signal (the
        workers remove their temp files; restic and borg leave no lock, no snapshot)."""
        self.stopping.set()
        for child in self._snapshot():
            child.request_stop()

    def stop_all(
        self, grace: float | None = None, kill_grace: float | None = None
    ) -> list[subprocess.Popen[bytes]]:
        """Stop every child and wait until each has exited, bounded: its stop signal
        (+SIGCONT), up to `grace`; SIGKILL to the groups still there, up to `kill_grace`.
        Each exited child is reaped here (whichever thread owns it): for a process about
        to exit (the CLI on Ctrl-C or SIGTERM), a child must neither outlive it nor be
        left half-way through removing its temp files, and whether its owner is a runner
        thread or the very thread this runs in makes no difference.
        Returns the children still not reaped (blocked in the kernel): never waited for.
        """
        self.terminate_all()
        if not self._wait_exited(STOP_GRACE_SECONDS if grace is None else grace):
            for child in self._snapshot():
                child.signal(signal.SIGKILL)
            self._wait_exited(KILL_GRACE_SECONDS if kill_grace is None else kill_grace)
        left = []
        for child in self._snapshot():
            if not (child.exited_now() and child.finish()):
                left.append(child.popen)
        return left

    @contextmanager
    def stop_all_if_interrupted(self, **fields: str) -> Iterator[None]:
        """Run the body; on any exception (Ctrl-C or SIGTERM in the CLI's main thread)
        `stop_all` before it propagates: a child launched by this very thread, even one
        its owner had no time to watch yet, is stopped and reaped before the CLI exits.
        A child blocked in the kernel past SIGKILL is named in one event (with `fields`)."""
        try:
            yield
        except BaseException:
            left = self.stop_all()
            if left:
                _log().error(
                    "workers not stopped",
                    pids=[process.pid for process in left],
                    message="blocked in the kernel past SIGKILL: left to exit on their own",
                    **fields,
                )
            raise

    def _snapshot(self) -> list[Child]:
        with self._lock:
            return list(self._children)

    def _wait_exited(self, seconds: float) -> bool:
        """True once every tracked child has exited or been forgotten, within `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            if all(child.exited_now() for child in self._snapshot()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._lock:
                self._changed.wait(min(remaining, 0.02))


def launch(
    command: Sequence[str],
    *,
    tracker: ProcessTracker | None,
    env: Mapping[str, str],
    user: User | None = None,
    stdin: int | None = subprocess.PIPE,
    stdout: int | None = subprocess.PIPE,
    pass_fds: tuple[int, ...] = (),
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Child | None:
    """Start one child of the root side, the one way every child is started (the
    workers, the stream workers, restic and borg). Its rules:

    - started and tracked in one step under the tracker's lock: a stop (the daemon's, or
      a CLI's Ctrl-C through `stop_all`) reaches it with `stop_signal`, and nothing is
      started once a stop has begun (None, starting nothing);
    - the daemon-only signals (SIGHUP, SIGUSR1: `systemctl kill` sends them to the whole
      unit) blocked while it is spawned: it inherits them blocked through exec, so one
      that arrives before a worker ignores them, or at an engine, is never delivered;
    - its own process group (its stop and SIGKILL reach what it starts too), cwd "/",
      umask 077, only the descriptors in `pass_fds`, the environment `env` and nothing
      of ours (secrets go in `env` or in files, never in `command`);
    - as `user` (their uid, gid and their own supplementary groups) when given and we
      are root; as root otherwise (an engine);
    - a pidfd for its deadlines, and signalled only until it is reaped (`Child`).

    stderr is always a pipe; `stdin`/`stdout` are PIPE, DEVNULL or a descriptor. The
    caller owns the child: it waits (`wait`, `exited`), stops (`stop`) and `release`s it.
    Raises OSError if it cannot be started.
    """
    as_user = user is not None and running_as_root()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(command),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd="/",
            env=dict(env),
            umask=0o077,
            process_group=0,
            close_fds=True,
            pass_fds=pass_fds,
            user=user.uid if as_user and user is not None else None,
            group=user.gid if as_user and user is not None else None,
            extra_groups=(
                os.getgrouplist(user.name, user.gid) if as_user and user is not None else None
            ),
        )

    # Blocked in this thread only: the daemon's main thread (its handler) keeps them.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, DAEMON_ONLY_SIGNALS)
    try:
        if tracker is not None:
            return tracker.launch(start, stop_signal)
        return Child(start(), stop_signal)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


@dataclass(frozen=True)
class StuckWorker:
    """A worker that could not be ended and reaped: its user is skipped until it is."""

    user: str
    uid: int
    pid: int
    action: str
    since: float  # wall-clock epoch seconds when it was abandoned


class Abandoned:
    """Workers given up on (outlived SIGKILL plus a grace, or exited but unreapable).

    One background thread reaps them whenever they finally go; until then their user is
    skipped (`worker_stuck`). At most one per uid can exist: a stuck user starts no worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[StuckWorker, Child]] = {}
        self._reaper: threading.Thread | None = None

    def add(self, user: User, action: str, child: Child) -> StuckWorker:
        stuck = StuckWorker(user.name, user.uid, child.pid, action, time.time())
        with self._lock:
            self._entries[user.uid] = (stuck, child)
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(
                    target=self._reap_loop, name="stuck-worker-reaper", daemon=True
                )
                self._reaper.start()
        _log().error(
            "worker abandoned",
            user=user.name,
            pid=child.pid,
            action=action,
            message=(
                "the worker outlived SIGKILL (held by a ptrace tracer or blocked in the "
                "kernel); this user is skipped until it is reaped"
            ),
        )
        return stuck

    def get(self, uid: int) -> StuckWorker | None:
        with self._lock:
            entry = self._entries.get(uid)
        return entry[0] if entry is not None else None

    def stuck(self) -> list[StuckWorker]:
        with self._lock:
            return [entry[0] for entry in self._entries.values()]

    def reap_now(self) -> None:
        """One reaping round (the reaper thread calls this every REAP_POLL_SECONDS)."""
        with self._lock:
            entries = list(self._entries.items())
        for uid, (stuck, child) in entries:
            # The pid is ours until reaped (`Child.signal` checks, under the reap's lock).
            if not child.finish(0.0):
                continue
            with self._lock:
                self._entries.pop(uid, None)
            _log().info(
                "stuck worker reaped",
                user=stuck.user,
                pid=stuck.pid,
                action=stuck.action,
                stuck_s=round(time.time() - stuck.since, 1),
            )

    def _reap_loop(self) -> None:
        while True:
            time.sleep(REAP_POLL_SECONDS)
            self.reap_now()
            with self._lock:
                if not self._entries:
                    self._reaper = None
                    return


# The process-wide registry: one daemon (or CLI run) has one set of abandoned workers.
ABANDONED = Abandoned()


def _log() -> Any:
    return get_logger()


def stuck_report(action: Action, stuck: StuckWorker) -> Report:
    """The report of a user skipped because their previous worker is still unreaped."""
    return failed(
        action,
        "worker_stuck",
        f"skipped: worker pid {stuck.pid} ({stuck.action}) outlived SIGKILL and is not "
        f"reaped yet (abandoned {time.time() - stuck.since:.0f}s ago)",
    )


class _Capped:
    """Bytes read from one of the worker's pipes: the first `limit`+1 kept, rest counted."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.fd = stream.fileno()
        self.limit = limit
        self.data = bytearray()
        self.open = True
        os.set_blocking(self.fd, False)

    def read_available(self, budget: int = 1 << 20) -> None:
        """Read what is there now (never waits), at most `budget` bytes this round."""
        while self.open and budget > 0:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                self.open = False
                return
            if not chunk:
                self.open = False
                return
            budget -= len(chunk)
            self.data += chunk[: self.limit + 1 - len(self.data)]
            if len(self.data) > self.limit:
                # Over the cap: the report is invalid whatever follows; stop reading (a
                # worker that then blocks on a full pipe runs into its deadline).
                self.open = False
                return


def _tail(data: bytes) -> str:
    text = data[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return printable(last)[:300]


def _exchange(
    child: Child,
    request: bytes,
    outputs: list[_Capped],
    deadline: float,
) -> bool:
    """Send the spec, read both pipes, until the worker exits or the deadline passes.

    Never blocks on a pipe: every descriptor is non-blocking and polled with a timeout.
    EOF is never waited for (a user may hold a copy of the pipes): the worker's exit,
    seen on its pidfd, ends the exchange. Returns True if it exited in time.
    """
    pidfd = child.pidfd
    stdin = child.popen.stdin
    if stdin is None:
        raise RuntimeError("Popen without stdin")
    in_fd: int | None = stdin.fileno()
    os.set_blocking(stdin.fileno(), False)
    pending = memoryview(request)
    poller = select.poll()
    poller.register(stdin.fileno(), select.POLLOUT)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    for output in outputs:
        poller.register(output.fd, select.POLLIN)
    exited = False
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Without a pidfd, wake up regularly to look with waitid.
        wait = remaining if pidfd is not None else min(remaining, REAP_POLL_SECONDS / 10)
        try:
            events = poller.poll(max(1, int(wait * 1000)))
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == pidfd:
                exited = True
            elif fd == in_fd:
                try:
                    written = os.write(fd, pending)
                except BlockingIOError:
                    written = 0
                except OSError:  # EPIPE: the worker is gone or closed its stdin
                    written = len(pending)
                pending = pending[written:]
                if not pending:
                    poller.unregister(fd)
                    stdin.close()
                    in_fd = None
        for output in outputs:
            if output.open:
                output.read_available()
                if not output.open:
                    poller.unregister(output.fd)
        if pidfd is None and child.exited_now():
            exited = True
    # What the worker wrote before it exited is in the pipes: take it, without waiting.
    for output in outputs:
        output.read_available(budget=output.limit + (1 << 16))
    return exited


def worker_command() -> list[str]:
    """`python -I -m t3backupd.worker`, from the venv we run from."""
    return [sys.executable, "-I", "-m", WORKER_MODULE]


def launch_worker(
    user: User, tracker: ProcessTracker | None, pass_fds: tuple[int, ...] = ()
) -> Child | None:
    """A worker as `user` through `launch` (stdin/stdout/stderr pipes, a minimal
    environment); `pass_fds` are inherited (a stream's pipe end). None once stopping.
    Raises OSError."""
    return launch(
        worker_command(),
        tracker=tracker,
        env=worker_environment(user),
        user=user,
        pass_fds=pass_fds,
    )


def run_worker(
    spec: JobSpec,
    user: User,
    timeout: float,
    tracker: ProcessTracker | None = None,
) -> Report:
    """Run one worker as `user` and return its (strictly parsed) report.

    Nothing here waits on the worker without a deadline: on timeout its process group
    gets SIGTERM, then SIGKILL after a grace; a worker that outlives SIGKILL plus a grace
    (or that exits but cannot be reaped) is abandoned to the background reaper and
    reported as `worker_stuck`. Never raises for worker misbehaviour.
    """
    started = time.monotonic()
    try:
        child = launch_worker(user, tracker)
    except OSError as error:
        return failed(spec.action, "worker_crashed", f"cannot start worker: {error}")
    if child is None:
        return Report(spec.action, STOPPED, None, "stopped: not started", duration_s=0.0)
    process = child.popen
    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise RuntimeError("Popen without pipes")  # cannot happen: all three are PIPE
    timed_out = False
    reaped = True
    # From here on the worker is ours to end: any exception (Ctrl-C in the CLI's main
    # thread, a bug) stops and reaps it before it propagates; nothing runs on unwatched.
    try:
        stdout = _Capped(process.stdout, MAX_REPORT_BYTES)
        stderr = _Capped(process.stderr, STDERR_TAIL_BYTES * 16)
        exited = _exchange(child, spec.to_json(), [stdout, stderr], started + timeout)
        if exited:
            reaped = child.finish()  # grandchildren left behind are killed first
        else:
            timed_out = True
            reaped = child.stop()
    except BaseException:
        if not child.stop():
            ABANDONED.add(user, spec.action, child)
        raise
    finally:
        # Close and forget our ends: whatever copy the user holds is theirs.
        for stream in (process.stdin, process.stdout, process.stderr):
            with suppress(OSError):
                stream.close()
        child.release()  # reaped (or abandoned): `stop_all` stops waiting
    duration = time.monotonic() - started
    if not reaped:
        stuck = ABANDONED.add(user, spec.action, child)
        if timed_out:
            return failed(
                spec.action,
                "worker_stuck",
                f"no result after {timeout:.0f}s, and worker pid {stuck.pid} outlived "
                f"SIGKILL by {KILL_GRACE_SECONDS:.0f}s (held by a tracer or blocked in the "
                "kernel): abandoned, user skipped until it is reaped",
                duration_s=duration,
            )
    if tracker is not None and tracker.stopping.is_set():
        report = _report_or_none(bytes(stdout.data), spec.action)
        if report is None or report.status == "failed":
            # Ended (or killed before its handler was installed) because we are stopping.
            why = report.message if report is not None else f"exit status {process.returncode}"
            return Report(spec.action, STOPPED, None, f"stopped: {why}"[:300], duration_s=duration)
    if timed_out:
        return failed(
            spec.action, "timeout", f"no result after {timeout:.0f}s", duration_s=duration
        )
    try:
        # An exited but unreapable worker's report still counts: it did its job, and
        # the user is skipped from now on until it is reaped.
        return parse_report(bytes(stdout.data), spec.action)
    except ReportError as error:
        detail = _tail(bytes(stderr.data))
        status = process.returncode if reaped else "unknown (not reaped)"
        message = f"invalid report ({error}); exit status {status}"
        if detail:
            message += f"; stderr: {detail}"
        reason: FailureReason = "worker_crashed" if reaped else "worker_stuck"
        return failed(spec.action, reason, message, duration_s=duration)


def _report_or_none(raw: bytes, action: Action) -> Report | None:
    try:
        return parse_report(raw, action)
    except ReportError:
        return None
