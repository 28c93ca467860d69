"""What running an engine takes, the same for restic and borg: the environment every
engine process starts from, a per-repository lock inside the daemon, and a process whose
output is drained with bounds, waited for with deadlines and stopped as a group."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

from t3backupd.root.offsite.engine import OffsiteError

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

    @contextmanager
    def shared(self, timeout: float) -> Iterator[None]:
        self._acquire(False, timeout)
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        self._acquire(True, timeout)
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
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


def lock_for(repository: str) -> RepositoryLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(repository, RepositoryLock())


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _drain(stream: IO[bytes], sink: list[bytes], cap: int) -> None:
    total = 0
    while chunk := stream.read(1 << 16):
        if total < cap:
            sink.append(chunk[: cap - total])
        total += len(chunk)


class EngineProcess:
    """One engine process, its stdout/stderr drained by threads (bounded). Stopped with
    `stop_signal` (the one that makes the engine leave nothing behind: SIGINT for restic,
    SIGTERM for borg), a grace, then SIGKILL of its whole group."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        tracker: Any,
        drain_stdout: bool,
        stop_signal: signal.Signals,
    ) -> None:
        self.popen = popen
        self.stop_signal = stop_signal
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        # Tracked like a worker: a daemon stop signals its group too.
        self._tracking = tracker.track(popen) if tracker is not None else None
        if self._tracking is not None:
            self._tracking.__enter__()
        self._threads = []
        streams = [(popen.stderr, self.err, ERROR_TAIL_BYTES * 4)]
        if drain_stdout:
            streams.append((popen.stdout, self.out, OUTPUT_CAP_BYTES))
        for stream, sink, cap in streams:
            if stream is not None:
                thread = threading.Thread(target=_drain, args=(stream, sink, cap), daemon=True)
                thread.start()
                self._threads.append(thread)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None (the group is stopped) on timeout."""
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._stop_group()
            status = None
        finally:
            self._done()
        return status

    def stop(self) -> None:
        self._stop_group()
        self._done()

    def _stop_group(self) -> None:
        if self.popen.poll() is None:
            signal_group(self.popen, self.stop_signal)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(STOP_GRACE_SECONDS)
        signal_group(self.popen, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(STOP_GRACE_SECONDS)

    def _done(self) -> None:
        signal_group(self.popen, signal.SIGKILL)  # nothing of it outlives it
        for thread in self._threads:
            thread.join(STOP_GRACE_SECONDS)
        if self._tracking is not None:
            self._tracking.__exit__(None, None, None)
            self._tracking = None

    @property
    def stdout(self) -> bytes:
        return b"".join(self.out)

    @property
    def stderr(self) -> bytes:
        return b"".join(self.err)
