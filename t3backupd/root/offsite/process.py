"""What running an engine takes, the same for restic and borg: the environment every
engine process starts from, a per-repository lock inside the daemon, and a process
started through the one launcher (`spawn.launch`) whose output is drained with bounds,
waited for with deadlines and stopped as a group with the engine's own stop signal."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import IO

from t3backupd.root.offsite.engine import OffsiteError
from t3backupd.root.spawn import Child, ProcessTracker, launch
from t3backupd.root.trusted import UntrustedFile, trusted_directory

STOP_GRACE_SECONDS = 5.0
OUTPUT_CAP_BYTES = 64 << 20
ERROR_TAIL_BYTES = 16 << 10
LOCK_WAIT_SECONDS = 600.0
BASE_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
}


class RepositoryLock:
    """One repository's lock within the daemon: shared for uploads, listings and restores,
    exclusive for forget/prune/check (the engines' own locks would refuse those while an
    upload runs), each waited for with a deadline."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False

    def shared(self, timeout: float) -> AbstractContextManager[None]:
        return self._held(False, timeout)

    def exclusive(self, timeout: float) -> AbstractContextManager[None]:
        return self._held(True, timeout)

    @contextmanager
    def _held(self, exclusive: bool, timeout: float) -> Iterator[None]:
        self._acquire(exclusive, timeout)
        try:
            yield
        finally:
            with self._condition:
                if exclusive:
                    self._writer = False
                else:
                    self._readers -= 1
                self._condition.notify_all()

    def _acquire(self, exclusive: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._writer or (exclusive and self._readers):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OffsiteError("locked", "another offsite operation holds the repository")
                self._condition.wait(left)
            if exclusive:
                self._writer = True
            else:
                self._readers += 1


_LOCKS: dict[str, RepositoryLock] = {}
_LOCKS_GUARD = threading.Lock()


def cache_directory(path: str, subdirectories: Sequence[str] = ()) -> int:
    """An open descriptor of `offsite.cache_dir`, created 0700 and trusted like the config
    (root's all the way up, no link followed; see trusted.trusted_directory), with each
    of `subdirectories` made in it the same way. Raises OffsiteError: one line naming
    offsite.cache_dir. The caller closes the descriptor."""
    fd = -1
    try:
        fd = trusted_directory(path)
        for name in subdirectories:
            os.close(trusted_directory(os.path.join(path, name)))
    except (UntrustedFile, OSError) as error:
        if fd >= 0:
            os.close(fd)
        why = error.strerror if isinstance(error, OSError) else str(error)
        raise OffsiteError("failed", f"offsite.cache_dir {path} refused: {why}") from None
    return fd


def lock_for(repository: str) -> RepositoryLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(repository, RepositoryLock())


def _drain(stream: IO[bytes], sink: list[bytes], cap: int) -> None:
    total = 0
    while chunk := stream.read(1 << 16):
        if total < cap:
            sink.append(chunk[: cap - total])
        total += len(chunk)


def start_engine(
    command: Sequence[str],
    env: Mapping[str, str],
    tracker: ProcessTracker | None,
    stop_signal: signal.Signals,
    stdin: int | None,
    drain_stdout: bool,
    name: str,
    where: str,
) -> EngineProcess:
    """Start an engine process (as root) through the one launcher, `spawn.launch`:
    tracked, its own group, daemon-only signals blocked, stopped with `stop_signal`.
    The secrets are in `env` or in files named in `command`, never in `command` itself.
    `name` (the configured binary) and `where` (the redacted repository) are for
    messages. Raises OffsiteError ("failed") once stopping or if it cannot be started."""
    try:
        child = launch(
            command,
            tracker=tracker,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stop_signal=stop_signal,
        )
    except OSError as error:
        raise OffsiteError("failed", f"cannot run {name}: {error.strerror}") from None
    if child is None:
        # Stopping: start nothing a stop could miss (it would outlive the daemon).
        raise OffsiteError("failed", f"not started on {where}: stopping")
    return EngineProcess(child, drain_stdout)


class EngineProcess:
    """One engine process, its stdout/stderr drained by threads (bounded). Stopped with
    its child's stop signal (the one that makes the engine leave nothing behind: SIGINT
    for restic, SIGTERM for borg), a grace, then SIGKILL of its whole group; by its
    owner on a timeout or an exception (Ctrl-C in the CLI's main thread), by the tracker
    on a stop."""

    def __init__(self, child: Child, drain_stdout: bool) -> None:
        self.child = child
        self.popen = child.popen
        self.stop_signal = child.stop_signal
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self._threads = []
        streams = [(self.popen.stderr, self.err, ERROR_TAIL_BYTES * 4)]
        if drain_stdout:
            streams.append((self.popen.stdout, self.out, OUTPUT_CAP_BYTES))
        for stream, sink, cap in streams:
            if stream is not None:
                thread = threading.Thread(target=_drain, args=(stream, sink, cap), daemon=True)
                thread.start()
                self._threads.append(thread)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None (the group is stopped) on timeout."""
        try:
            return self.child.wait(timeout)
        finally:
            self._done()

    def stop(self) -> None:
        self._done()

    def _done(self) -> None:
        """Stopped if still running (its signal, a grace, SIGKILL), its group killed,
        reaped, its output threads joined, forgotten by the tracker."""
        if self.child.exited_now():
            self.child.finish()  # nothing of it outlives it
        else:
            self.child.stop(STOP_GRACE_SECONDS, STOP_GRACE_SECONDS)
        for thread in self._threads:
            thread.join(STOP_GRACE_SECONDS)
        self.child.release()

    @property
    def stdout(self) -> bytes:
        return b"".join(self.out)

    @property
    def stderr(self) -> bytes:
        return b"".join(self.err)
