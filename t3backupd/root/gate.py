"""The pass gate: one pass at a time, and who waits for whom.

Snapshot passes (scheduled, catch-up, SIGUSR1) and verify passes share one gate, so the
two never compete for the disk. A scheduled or catch-up snapshot pass that finds the gate
taken waits for it (the nightly snapshot must not be lost to a verify pass), giving up
only when the daemon stops; any other pass is dropped with a log line.
"""

from __future__ import annotations

import threading
import time

from t3backupd.root.log import get_logger

# Snapshot passes that wait for a running pass (verify or snapshot) instead of being dropped.
WAITING_TRIGGERS = frozenset({"schedule", "catch-up"})
POLL_SECONDS = 1.0


class PassGate:
    """A lock that remembers what holds it (a pass trigger, or "verify")."""

    def __init__(self, stopping: threading.Event) -> None:
        self._lock = threading.Lock()
        self._stopping = stopping
        self.holder = ""

    def locked(self) -> bool:
        return self._lock.locked()

    def try_enter(self, holder: str) -> bool:
        """Take the gate if it is free. True if taken (the caller must `leave()`)."""
        if not self._lock.acquire(blocking=False):
            return False
        self.holder = holder
        return True

    def enter_for_pass(self, trigger: str) -> bool:
        """Take the gate for a snapshot pass by `trigger`, waiting or dropping as the module
        says. True if taken (the caller must `leave()`)."""
        if self.try_enter(trigger):
            return True
        log = get_logger()
        holder = self.holder or "unknown"
        if trigger not in WAITING_TRIGGERS:
            log.info("pass not started: one is already running", trigger=trigger, running=holder)
            return False
        (log.warning if holder == "verify" else log.info)(
            "pass waiting for the running pass to finish", trigger=trigger, running=holder
        )
        clock = time.monotonic()
        while not self._stopping.is_set():
            if self._lock.acquire(timeout=POLL_SECONDS):
                self.holder = trigger
                log.info("waiting pass starts", trigger=trigger,
                         waited_s=round(time.monotonic() - clock, 1))  # fmt: skip
                return True
        log.info("waiting pass not started: stopping", trigger=trigger)
        return False

    def leave(self) -> None:
        self.holder = ""
        self._lock.release()

    def wait_idle(self, timeout: float) -> bool:
        """True if no pass holds the gate within `timeout` seconds (used by a stop)."""
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True
