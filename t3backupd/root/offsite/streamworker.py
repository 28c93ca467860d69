"""A worker as the user that streams: an upload's source or a restore's sink.

Root never opens a user's path, so a user's bytes only ever cross as a pipe to a worker
running as that user. Its report and stderr are drained by two threads (the report
capped at 1 MiB; a user who keeps a copy of those pipes open only keeps a thread
blocked, which is joined for at most `STOP_GRACE_SECONDS` and then left behind), while
the snapshot bytes go through the deadline-bound pump (`pump.py`).
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress

from t3backupd.core.protocol import JobSpec, Report, ReportError, failed, parse_report
from t3backupd.core.usermap import User
from t3backupd.root.offsite.engine import OffsiteError
from t3backupd.root.spawn import ABANDONED, ProcessTracker, launch_worker

WORKER_REPORT_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0


class StreamWorker:
    """A worker as the user with one pipe end inherited, started through the one
    launcher (`spawn.launch_worker`: tracked, its own group, signals masked); its report
    read with deadlines. Raises OffsiteError if it cannot start (or a stop has begun)."""

    def __init__(self, spec: JobSpec, user: User, child_fd: int, tracker: ProcessTracker | None):
        self.spec = spec
        self.user = user
        self.out: list[bytes] = []
        try:
            child = launch_worker(user, tracker, pass_fds=(child_fd,))
        except OSError as error:
            raise OffsiteError("worker", f"cannot start worker: {error}") from None
        finally:
            os.close(child_fd)
        if child is None:
            raise OffsiteError("failed", "worker not started: stopping")
        self.child = child
        self.process = child.popen
        self._done = False
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        stdin = self.process.stdin
        if stdin is not None:
            with suppress(BrokenPipeError):
                stdin.write(spec.to_json())
                stdin.close()

    def _drain(self, stream: object, keep: bool) -> None:
        read = getattr(stream, "read", None)
        if read is None:
            return
        total = 0
        while chunk := read(1 << 16):
            if keep and total <= (1 << 20):
                self.out.append(chunk)
            total += len(chunk)

    def stop(self) -> None:
        """SIGTERM (+SIGCONT) its group, a grace, SIGKILL, a grace; reaped (or, past all
        of it, abandoned: its user is skipped until it is reaped)."""
        if not self._done:
            self._end(stop=True)

    def _end(self, stop: bool) -> None:
        self._done = True
        if not stop and self.child.exited_now():
            self.child.finish()  # what is left of its group goes with it
        elif not self.child.stop(STOP_GRACE_SECONDS, STOP_GRACE_SECONDS):
            ABANDONED.add(self.user, self.spec.action, self.child)
        for reader in self._readers:
            reader.join(STOP_GRACE_SECONDS)
        self.child.release()

    def report(self, timeout: float) -> Report:
        """Its report once it exits within `timeout` (stopped past it: `timeout`)."""
        if not self._done:
            if not self.child.exited(timeout):
                self._end(stop=True)
                return failed(self.spec.action, "timeout", f"no report after {timeout:.0f}s")
            self._end(stop=False)
        try:
            return parse_report(b"".join(self.out), self.spec.action)
        except ReportError as error:
            return failed(self.spec.action, "worker_crashed", f"invalid report ({error})")
