"""Metrics from the snapshots on disk: each served user's directory listed by a worker
running as that user (through the one runner), results put into `Metrics`.

Always in the background (at start too: READY=1 never waits for a user's worker), so the
main thread keeps answering signals and the watchdog while a worker takes its whole
timeout. Users being listed are exported as `t3backup_inventory_pending{user} 1`.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence

from t3backupd.core.config import Config
from t3backupd.core.protocol import UserResult
from t3backupd.core.retention import newest_current
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger
from t3backupd.root.metrics import Metrics
from t3backupd.root.passes import run_inventory
from t3backupd.root.spawn import ProcessTracker

CONCURRENCY = 8

Newest = dict[str, float | None]  # user -> newest snapshot time (None: none, or unknown)


class Inventory:
    def __init__(self, metrics: Metrics, tracker: ProcessTracker) -> None:
        self._metrics = metrics
        self._tracker = tracker

    def restore_now(self, config: Config, users: Sequence[User]) -> Newest:
        """List every user now; returns each user's newest snapshot time (None: none, or
        the listing failed)."""
        results = run_inventory(config, users, CONCURRENCY, self._tracker)
        return {result.user.name: self.apply(result) for result in results}

    def start(
        self,
        config: Config,
        users: Sequence[User],
        current: Callable[[], bool],
        on_done: Callable[[Newest], None] | None = None,
    ) -> threading.Thread:
        """List `users` in the background (marked pending until their result comes); each
        result is applied when it comes, unless `current()` says a later reload replaced
        what it was listed for (Metrics itself drops users no longer served). `on_done`
        gets every listed user's newest snapshot time, from the inventory's thread."""
        self._metrics.set_pending((user.name for user in users), True)
        newest: Newest = {}

        def apply(result: UserResult) -> None:
            if current():
                newest[result.user.name] = self.apply(result)
            else:
                newest[result.user.name] = None
            self._metrics.set_pending([result.user.name], False)

        def run() -> None:
            try:
                run_inventory(config, users, CONCURRENCY, self._tracker, apply)
            finally:
                # A user the runner never reported (it stopped early) is no longer pending.
                self._metrics.set_pending(
                    (user.name for user in users if user.name not in newest), False
                )
            if on_done is not None:
                on_done(newest)

        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(run,), name="inventory", daemon=True
        )
        thread.start()
        return thread

    def apply(self, result: UserResult) -> float | None:
        """Put one user's listing into the metrics; their newest snapshot time, or None."""
        user, report = result.user, result.report
        if report.reason == "no_directory":
            self._metrics.restore(user.name, (), listed_at=result.started)  # nothing on disk
            return None
        if not report.ok:
            get_logger().warning(
                "cannot list snapshots", user=user.name, reason=report.reason,
                message=report.message,
            )  # fmt: skip
            return None
        self._metrics.restore(user.name, report.snapshots, listed_at=result.started)
        self._metrics.record_dir_bytes(user.name, report.dir_bytes)
        newest = newest_current(report.snapshots, lambda info: info.time, time.time())
        return newest.time if newest is not None else None
