"""The daemon's APScheduler jobs, typed, with their options written once.

Every cron job the daemon places (the pass, verify, offsite prune and check) coalesces
missed runs into one, never runs twice at once and has the schedule's misfire grace; a
job asked for now (SIGUSR1, catch-up) runs at once, however late its thread starts.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED
from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

# What wakes the daemon's main loop: a job started, missed or refused as already running.
WAKING_EVENTS = EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES


class CronJobs:
    """One BackgroundScheduler and the daemon's jobs on it, by id."""

    def __init__(self, threads: int, on_event: Callable[[], None]) -> None:
        self._scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": SchedulerExecutor(max_workers=threads)}
        )
        self._on_event = on_event
        self._requests = 0

    def start(self) -> None:
        self._scheduler.add_listener(self._wake, WAKING_EVENTS)
        self._scheduler.start()

    def _wake(self, event: Any) -> None:
        # Scheduler thread: only tell the main loop (it refreshes next run and STATUS).
        self._on_event()

    def shutdown(self) -> None:
        """No new runs; running jobs are not waited for (a stop bounds them itself)."""
        self._scheduler.shutdown(wait=False)

    def place(
        self,
        job_id: str,
        function: Callable[[], object],
        trigger: CronTrigger | None,
        grace_seconds: int,
        name: str,
    ) -> None:
        """Put job `job_id` on `trigger`, replacing what had that id; None removes it."""
        self.remove(job_id)
        if trigger is None:
            return
        self._scheduler.add_job(
            function,
            trigger,
            id=job_id,
            name=name,
            misfire_grace_time=grace_seconds,
            coalesce=True,
            max_instances=1,
        )

    def remove(self, job_id: str) -> None:
        if self._scheduler.get_job(job_id) is not None:
            self._scheduler.remove_job(job_id)

    def run_now(self, function: Callable[[], object], kind: str) -> None:
        """Run `function` once on a scheduler thread, as job "<kind>-<n>"."""
        self._requests += 1
        self._scheduler.add_job(
            function, id=f"{kind}-{self._requests}", name=f"{kind} pass", misfire_grace_time=None
        )

    def next_run_time(self, job_id: str) -> datetime | None:
        job = self._scheduler.get_job(job_id)
        moment: datetime | None = None if job is None else job.next_run_time
        return moment

    def alive(self) -> bool:
        """Whether the scheduler's thread runs (the watchdog pings only then)."""
        # BackgroundScheduler keeps its thread in `_thread`; there is no public accessor.
        thread = getattr(self._scheduler, "_thread", None)
        return bool(self._scheduler.running) and thread is not None and thread.is_alive()

    def wakeup(self) -> None:
        """Make the scheduler re-read the wall clock (it sleeps in monotonic time)."""
        self._scheduler.wakeup()
