"""Metrics from the snapshots on disk: each served user's directory listed by a worker
running as that user (through the one runner), results put into `Metrics`.

At start this blocks (the metrics must be true before READY=1); after a reload it runs in
the background, so the main thread keeps answering signals and the watchdog while a
worker takes its whole timeout.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence

from t3backupd.core.config import Config
from t3backupd.core.protocol import UserResult
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger
from t3backupd.root.metrics import Metrics
from t3backupd.root.passes import run_inventory
from t3backupd.root.spawn import ProcessTracker

CONCURRENCY = 8


class Inventory:
    def __init__(self, metrics: Metrics, tracker: ProcessTracker) -> None:
        self._metrics = metrics
        self._tracker = tracker

    def restore_now(self, config: Config, users: Sequence[User]) -> dict[str, float | None]:
        """List every user now; returns each user's newest snapshot time (None: none, or
        the listing failed)."""
        results = run_inventory(config, users, CONCURRENCY, self._tracker)
        return {result.user.name: self.apply(result) for result in results}

    def start(self, config: Config, users: Sequence[User], current: Callable[[], bool]) -> None:
        """List `users` in the background; each result is applied when it comes, unless
        `current()` says a later reload replaced what it was listed for (Metrics itself
        drops users no longer served)."""

        def apply(result: UserResult) -> None:
            if current():
                self.apply(result)

        threading.Thread(
            target=contextvars.copy_context().run,
            args=(run_inventory, config, users, CONCURRENCY, self._tracker, apply),
            name="inventory",
            daemon=True,
        ).start()

    def apply(self, result: UserResult) -> float | None:
        """Put one user's listing into the metrics; their newest snapshot time, or None."""
        user, report = result.user, result.report
        if report.reason == "no_directory":
            self._metrics.restore(user.name, ())  # nothing on disk: never backed up
            return None
        if not report.ok:
            get_logger().warning(
                "cannot list snapshots", user=user.name, reason=report.reason,
                message=report.message,
            )  # fmt: skip
            return None
        self._metrics.restore(user.name, report.snapshots)
        self._metrics.record_dir_bytes(user.name, report.dir_bytes)
        times = [info.time for info in report.snapshots]
        return max(times) if times else None
