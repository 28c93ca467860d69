"""The daemon's passes: their jobs (the schedule, `[verify] cron`, a pass asked for
now), and each run on a scheduler thread: through the gate (one at a time), over the
users served when it starts, each snapshot result recorded in the metrics and handed to
the offsite lane, and one line about the last pass for STATUS=.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog

from t3backupd.core.checks import verify_failures
from t3backupd.core.config import Config
from t3backupd.core.protocol import UserResult
from t3backupd.root.cronjobs import CronJobs
from t3backupd.root.gate import WAITING_TRIGGERS, PassGate
from t3backupd.root.log import get_logger
from t3backupd.root.metrics import Metrics
from t3backupd.root.offsitejobs import DaemonOffsite
from t3backupd.root.passes import run_pass, run_verify_pass
from t3backupd.root.scheduler import build_trigger, longest_interval, schedule_key, trigger_for
from t3backupd.root.served import Served, verify_shadowed
from t3backupd.root.spawn import ProcessTracker
from t3backupd.root.watch import DestWatch

JOB_ID = "pass"
VERIFY_JOB_ID = "verify"
# Scheduler threads: a waiting scheduled pass, a waiting catch-up pass and the running one.
SCHEDULER_THREADS = 3


def summarize_pass(results: Sequence[UserResult]) -> str:
    """One line about a finished pass, e.g. "3 ok, 1 failed (alice: timeout)"."""
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    failed: list[str] = []
    for result in results:
        counts[result.report.status] = counts.get(result.report.status, 0) + 1
        if result.report.status == "failed":
            failed.append(f"{result.user.name}: {result.report.reason}")
    text = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    if failed:
        text += " (" + "; ".join(failed[:5]) + ("; ..." if len(failed) > 5 else "") + ")"
    return text or "no users"


class PassRunner:
    """Places the daemon's pass jobs and runs the passes (`run` and `verify` are called on
    scheduler threads, the rest on the main thread)."""

    def __init__(
        self,
        served: Callable[[], Served],
        gate: PassGate,
        stopping: threading.Event,
        tracker: ProcessTracker,
        metrics: Metrics,
        watch: DestWatch,
        offsite: DaemonOffsite,
        jobs: CronJobs,
        save_state: Callable[[Served], None],
        on_finished: Callable[[], None],
    ) -> None:
        self._served = served
        self._gate = gate
        self._stopping = stopping
        self._tracker = tracker
        self._metrics = metrics
        self._watch = watch
        self._offsite = offsite
        self._jobs = jobs
        self._save_state = save_state
        self._on_finished = on_finished
        self._log = get_logger()
        self.previous_result = "none yet"

    # --- jobs (main thread) -----------------------------------------------------------

    def _publish_interval(self, config: Config) -> None:
        """The staleness alerts' threshold: derived from the schedule, so an hourly
        schedule pages after hours of no snapshot, a daily one after a day."""
        trigger = trigger_for(config.schedule)
        self._metrics.set_schedule_interval(longest_interval(trigger, datetime.now(UTC)))

    def schedule(self, old: Config | None, new: Config) -> None:
        """Place the pass job and the optional `[verify] cron` job for `new`: at start
        (`old` None), and on reload only where what they depend on changed (a pass job
        placed anew draws a new jitter)."""
        grace = new.schedule.misfire_grace_seconds
        if old is None or schedule_key(old.schedule) != schedule_key(new.schedule):
            self._publish_interval(new)
        if old is None or (schedule_key(old.schedule), old.schedule.misfire_grace_seconds) != (
            schedule_key(new.schedule),
            grace,
        ):
            run = functools.partial(self.run, "schedule")
            self._jobs.place(JOB_ID, run, trigger_for(new.schedule), grace, "backup pass")
        if old is None or (old.verify, schedule_key(old.schedule)) != (
            new.verify,
            schedule_key(new.schedule),
        ):
            self._schedule_verify(new)

    def _schedule_verify(self, config: Config) -> None:
        """The optional `[verify] cron` job: (re)placed, or removed when the cron is ""."""
        cron = config.verify.cron
        self._metrics.set_verify_enabled(bool(cron))
        shadowed = verify_shadowed(config) if cron else None
        if shadowed is not None:
            self._log.warning("verify passes will be skipped", detail=shadowed)
        trigger = build_trigger(cron, config.schedule.timezone) if cron else None
        grace = config.schedule.misfire_grace_seconds
        self._jobs.place(VERIFY_JOB_ID, self.verify, trigger, grace, "verify pass")

    def request(self, trigger: str) -> None:
        """Start a pass now on the scheduler's executor. A manual one is dropped if a pass
        is running; a catch-up one waits for it (see `PassGate.enter_for_pass`)."""
        if trigger not in WAITING_TRIGGERS and self._gate.locked():
            self._log.info(
                "pass not started: one is already running",
                trigger=trigger,
                running=self._gate.holder,
            )
            return
        self._jobs.run_now(functools.partial(self.run, trigger), trigger)

    def next_run_time(self) -> datetime | None:
        return self._jobs.next_run_time(JOB_ID)

    # --- runs (scheduler threads) -------------------------------------------------------

    def run(self, trigger: str) -> None:
        """One pass over the users served when it starts."""
        if not self._gate.enter_for_pass(trigger):
            return
        try:
            if self._stopping.is_set():
                return
            served = self._served()  # this pass keeps this config, whatever a reload does
            with structlog.contextvars.bound_contextvars(
                pass_id=uuid.uuid4().hex[:8], trigger=trigger
            ):
                summary = self._snapshot_pass(served)
            self.previous_result = f"{summary} at {datetime.now(UTC).isoformat(timespec='seconds')}"
        except Exception:
            # A bug, not a user's failure (those are reports): keep serving, but loudly.
            self._log.exception("pass crashed", trigger=trigger)
            self.previous_result = "crashed (see log)"
        finally:
            self._gate.leave()
            self._on_finished()

    def _snapshot_pass(self, served: Served) -> str:
        self._log.info("pass started", users=len(served.users))
        clock = time.monotonic()
        results = run_pass(
            served.config,
            served.users,
            tracker=self._tracker,
            on_result=self._watch.recorder(self._on_snapshot_result, served.config.dest),
        )
        self._save_state(served)
        summary = summarize_pass(results)
        failed = sum(result.report.status == "failed" for result in results)
        (self._log.warning if failed else self._log.info)(
            "pass stopped" if self._stopping.is_set() else "pass finished",
            result=summary,
            duration_s=round(time.monotonic() - clock, 3),
        )
        return summary

    def _on_snapshot_result(self, result: UserResult) -> None:
        """Record one user's snapshot; queue their offsite sync (the second lane: the
        pass goes on to the next user at once)."""
        self._metrics.record_result(result)
        self._offsite.submit(result.user)

    def verify(self) -> None:
        """Scheduled verification of every stored snapshot (shares the pass gate: never
        at the same time as a snapshot pass, so the two do not compete for the disk)."""
        if not self._gate.try_enter("verify"):
            self._log.info("verify pass not started: a pass is running", running=self._gate.holder)
            return
        try:
            if self._stopping.is_set():
                return
            served = self._served()
            with structlog.contextvars.bound_contextvars(pass_id=uuid.uuid4().hex[:8]):
                results = run_verify_pass(
                    served.config,
                    served.users,
                    tracker=self._tracker,
                    on_result=lambda result: self._metrics.record_verify(
                        result.user.name, verify_failures(result.report), result.finished
                    ),
                )
                bad = sum(verify_failures(result.report) for result in results)
                (self._log.warning if bad else self._log.info)(
                    "verify pass stopped" if self._stopping.is_set() else "verify pass finished",
                    users=len(results),
                    bad_snapshots=bad,
                )
        except Exception:
            self._log.exception("verify pass crashed")
        finally:
            self._gate.leave()
