"""The daemon's offsite lane: uploads beside the snapshot pass, never in its way.

Each user whose snapshot job finished in a pass is queued here; `offsite.concurrency`
lane threads take users off the queue and run the per-user offsite job (`sync.py`,
the one `t3backupd offsite sync` runs too) through the one per-user runner
(`run_for_users`). A snapshot pass never waits for the lane, and an offsite failure
is counted and logged, never a snapshot failure. Prune and the check (with its restore
drill, `checks.py`, the one the CLI's `offsite check` runs too) run on their own crons.
Metrics are restored from the repository at start, in the background (the repository
may be slow or away).
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

from prometheus_client import CollectorRegistry

from t3backupd.core.config import Config
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger
from t3backupd.root.offsite import checkrecord, make_engine
from t3backupd.root.offsite.checkrecord import CheckRecord
from t3backupd.root.offsite.checks import check_and_record
from t3backupd.root.offsite.engine import OffsiteError
from t3backupd.root.offsite.metrics import OffsiteMetrics
from t3backupd.root.offsite.sync import UserOffsite, user_job
from t3backupd.root.runner import run_for_users
from t3backupd.root.spawn import ProcessTracker

IDLE_POLL_SECONDS = 0.5
CHECK_RECORD_POLL_SECONDS = 2.0


class OffsiteService:
    def __init__(
        self,
        config: Callable[[], Config],
        users: Callable[[], Sequence[User]],
        tracker: ProcessTracker,
        registry: CollectorRegistry,
    ) -> None:
        self._config = config
        self._users = users
        self._tracker = tracker
        self.metrics = OffsiteMetrics(registry)
        self._queue: queue.SimpleQueue[User] = queue.SimpleQueue()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._log = get_logger()
        self.idle = threading.Event()
        self.idle.set()
        self._busy = 0
        self._check_stamp: checkrecord.Stamp | None = None

    def start(self) -> None:
        config = self._config()
        self.metrics.set_users(user.name for user in self._users())
        concurrency = config.offsite.concurrency if config.offsite is not None else 1
        for number in range(concurrency):
            thread = threading.Thread(
                target=contextvars.copy_context().run,
                args=(self._lane,),
                name=f"offsite-{number}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._refresh_check_record()
        threading.Thread(
            target=self._watch_check_record, name="offsite-check-record", daemon=True
        ).start()
        threading.Thread(target=self._restore_metrics, name="offsite-restore", daemon=True).start()

    def set_users(self, users: Sequence[User]) -> None:
        self.metrics.set_users(user.name for user in users)

    def _restore_metrics(self) -> None:
        config = self._config()
        if config.offsite is None:
            return
        try:
            copies = make_engine(config, self._tracker).snapshots()
        except OffsiteError as error:
            self._log.error("offsite metrics not restored", reason=error.reason,
                            message=error.message)  # fmt: skip
            return
        self.metrics.restore(copies)
        self._log.info("offsite metrics restored", copies=len(copies))
        if copies:
            self._copies_seen(config)

    # --- the lane -----------------------------------------------------------------------

    def submit(self, user: User) -> None:
        """Queue `user` for an offsite sync (once, however often it is submitted)."""
        with self._pending_lock:
            if user.name in self._pending:
                return
            self._pending.add(user.name)
            self.idle.clear()
        self._queue.put(user)

    def _lane(self) -> None:
        while not self._tracker.stopping.is_set():
            try:
                user = self._queue.get(timeout=IDLE_POLL_SECONDS)
            except queue.Empty:
                continue
            with self._pending_lock:
                self._pending.discard(user.name)
                self._busy += 1
            try:
                self._sync(user)
            except Exception:
                self._log.exception("offsite lane crashed", user=user.name)
            finally:
                with self._pending_lock:
                    self._busy -= 1
                    if not self._pending and not self._busy:
                        self.idle.set()

    def _sync(self, user: User) -> None:
        config = self._config()
        if config.offsite is None or user.name not in {u.name for u in self._users()}:
            return
        engine = make_engine(config, self._tracker)
        job = user_job(engine, config, self._tracker, partial(self._recorded, config))
        run_for_users([user], job, concurrency=1, tracker=self._tracker, action="stream")

    def _recorded(self, config: Config, outcome: UserOffsite) -> None:
        """One user's outcome into the metrics (not once a stop has begun: a stopped
        upload is not the repository's failure) and the log."""
        if not self._tracker.stopping.is_set():
            self.metrics.record(outcome)
        if outcome.uploaded or outcome.snapshots:
            self._copies_seen(config)
        self._log_outcome(outcome)

    def _log_outcome(self, outcome: UserOffsite) -> None:
        fields = {
            "user": outcome.user.name,
            "uploaded": [item.meta.name for item in outcome.uploaded],
            "bytes_added": sum(item.bytes_added for item in outcome.uploaded),
            "forgotten": len(outcome.forgotten),
            "snapshots": outcome.snapshots,
        }
        if outcome.ok:
            self._log.info("offsite", status="ok", **fields)
        else:
            first = outcome.failures[0]
            self._log.error(
                "offsite", status="failed", reason=first.reason, message=first.message, **fields
            )

    # --- scheduled maintenance -------------------------------------------------------

    def prune(self) -> None:
        config = self._config()
        if config.offsite is None:
            return
        engine = make_engine(config, self._tracker)
        try:
            engine.unlock_stale()
            engine.prune()
            self._log.info("offsite prune", status="ok")
        except OffsiteError as error:
            self._log.error("offsite prune", status="failed", reason=error.reason,
                            message=error.message)  # fmt: skip

    def check(self) -> bool:
        config = self._config()
        if config.offsite is None:
            return False
        engine = make_engine(config, self._tracker)
        result = check_and_record(engine, config, self._users())
        if result.error is not None:
            self._log.error("offsite check", status="failed", reason=result.error.reason,
                            message=result.error.message)  # fmt: skip
        for drill in result.drills:
            if not drill.ok:
                self._log.error("offsite drill", user=drill.user, snapshot=drill.name,
                                message=drill.message)  # fmt: skip
            for _ in drill.untrusted:
                self.metrics.count_failure(drill.user, "untrusted")
        self._check_stamp = checkrecord.stamp(config.offsite.cache_dir)
        self.metrics.set_check_record(result.record)
        self._log.info("offsite check", status="ok" if result.ok else "failed")
        return result.ok

    # --- root's record of checks -------------------------------------------------------
    # Every check, the CLI's too, is recorded in offsite.cache_dir (checkrecord). It is
    # loaded at start and again whenever the file changes (a stat every few seconds on a
    # thread of its own, never in a scrape), so `t3backupd offsite check` clears the
    # check alerts without a restart.

    def _copies_seen(self, config: Config) -> None:
        """Root's record of when copies were first seen (NeverChecked counts from it)."""
        if config.offsite is None or self.metrics.first_copy_seen():
            return
        record = checkrecord.copies_seen(config.offsite.cache_dir, time.time())
        self.metrics.set_check_record(record)

    def _refresh_check_record(self) -> None:
        config = self._config()
        if config.offsite is None:
            return
        directory = config.offsite.cache_dir
        stamp = checkrecord.stamp(directory)
        if stamp == self._check_stamp:
            return
        self._check_stamp = stamp
        record = checkrecord.load(directory, time.time())
        self.metrics.set_check_record(record or CheckRecord())
        if record is not None:
            self._log.info("offsite check record loaded", last_passed=record.last_passed,
                           last_check=record.last_check, failures=record.failures)  # fmt: skip

    def _watch_check_record(self) -> None:
        while not self._tracker.stopping.wait(CHECK_RECORD_POLL_SECONDS):
            try:
                self._refresh_check_record()
            except Exception:
                self._log.exception("offsite check record watch crashed")
