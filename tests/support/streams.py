"""A user freezing their own offsite stream worker mid-upload, done here as root by pid
(what the user could do: the worker is theirs and dumpable after setuid and exec)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from t3backupd.core.usermap import User

# Frozen once this much of the snapshot was read: the root side has had well over a MiB
# by then (the worker reads 1 MiB, then blocks on the pipe until it is taken), so an
# engine fed straight from the stream would be running.
FROZEN_PAST = 3 << 20


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _snapshot_fd(pid: int, directory: Path) -> int | None:
    """The descriptor on which `pid` reads a snapshot of `directory`, if any."""
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for entry in entries:
        with suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
            if target.startswith(f"{directory}/state-") and target.endswith(".sqlite"):
                return int(entry)
    return None


def _position(pid: int, fd: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    except OSError:
        return None
    return int(text.split("pos:", 1)[1].split()[0])


def _stop(pid: int) -> bool:
    """SIGSTOP `pid` and wait until it is stopped (False: it is gone)."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10
    while (state := _state(pid)) not in (None, "T", "t"):
        assert time.monotonic() < deadline, f"{pid} not stopped"
        time.sleep(0.001)
    return state is not None


def _continue(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


class StreamFreezer:
    """Every stream worker of `user` is SIGSTOPped once it has read `FROZEN_PAST` bytes of
    its snapshot (stepped there with SIGSTOP/SIGCONT, so it never runs past unseen), and
    left frozen: `frozen` lists them."""

    def __init__(self, user: User, directory: Path) -> None:
        self.user = user
        self.directory = directory
        self.frozen: list[int] = []
        self.escaped: list[int] = []
        self._seen: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _workers(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in self._seen:
                with suppress(OSError):
                    ours = os.stat(f"/proc/{entry}").st_uid == self.user.uid
                    if ours and b"t3backupd.worker" in Path(f"/proc/{entry}/cmdline").read_bytes():
                        found.append(int(entry))
        return found

    def _watch(self) -> None:
        while not self._done.is_set():
            for pid in self._workers():
                fd = _snapshot_fd(pid, self.directory)
                if fd is not None:
                    self._seen.add(pid)
                    self._freeze(pid, fd)
            time.sleep(0.002)

    def _freeze(self, pid: int, fd: int) -> None:
        while _stop(pid):
            position = _position(pid, fd)
            if position is None:  # it closed the snapshot: not streaming (any more)
                self.escaped.append(pid)
                break
            if position >= FROZEN_PAST:
                self.frozen.append(pid)
                return
            _continue(pid)
            time.sleep(0.0005)
        _continue(pid)

    def still_frozen(self) -> bool:
        return bool(self.frozen) and all(_state(pid) in ("T", "t") for pid in self.frozen)

    def thaw(self) -> None:
        for pid in self.frozen:
            _continue(pid)

    @contextmanager
    def running(self) -> Iterator[StreamFreezer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join(30)
            self.thaw()
