"""The daemon's offsite wiring: the lane (`offsite.service.OffsiteService`) started at
start or by the first reload that brings an `[offsite]`, each user's finished snapshot
handed to it, its `prune_cron` and `check_cron` jobs (re)placed at every reload, and
what a reload changed in `[offsite]`, in words that never carry a value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from t3backupd.core.config import Config
from t3backupd.core.offsite_config import OFFSITE_KEYS, OffsiteConfig
from t3backupd.core.usermap import User
from t3backupd.root.cronjobs import CronJobs
from t3backupd.root.scheduler import build_trigger
from t3backupd.root.served import Served
from t3backupd.root.spawn import ProcessTracker

if TYPE_CHECKING:
    from t3backupd.root.offsite.service import OffsiteService

OFFSITE_PRUNE_JOB_ID = "offsite-prune"
OFFSITE_CHECK_JOB_ID = "offsite-check"


def changed_offsite_keys(old: OffsiteConfig | None, new: OffsiteConfig | None) -> list[str]:
    """The `[offsite]` keys whose value a reload changed ("offsite.repository"), by name
    only: the repository URL, the options and the file names may carry or point at a
    credential, and one rule for every key leaves no secret-bearing key to forget."""
    if old is None or new is None:
        return []
    return [f"offsite.{name}" for name in OFFSITE_KEYS if getattr(old, name) != getattr(new, name)]


class DaemonOffsite:
    """The offsite lane as the daemon runs it (absent until a config has `[offsite]`)."""

    def __init__(
        self,
        served: Callable[[], Served],
        tracker: ProcessTracker,
        registry: CollectorRegistry,
        jobs: CronJobs,
    ) -> None:
        self._served = served
        self._tracker = tracker
        self._registry = registry
        self._jobs = jobs
        self._service: OffsiteService | None = None

    def start(self) -> None:
        """At start, and after each reload's swap (so the lane reads the new config):
        start the lane if `[offsite]` is configured and it is not running, then place
        its crons (removed when `[offsite]` is gone)."""
        config = self._served().config
        if config.offsite is not None and self._service is None:
            # Imported here: a daemon without [offsite] never loads the engines.
            from t3backupd.root.offsite.service import OffsiteService

            self._service = OffsiteService(
                lambda: self._served().config, lambda: self._served().users, self._tracker,
                self._registry,
            )  # fmt: skip
            self._service.start()
        self._schedule(config)

    def _schedule(self, config: Config) -> None:
        """`offsite.prune_cron` and `offsite.check_cron`: replaced, or removed without a lane."""
        if config.offsite is None or self._service is None:
            for job_id in (OFFSITE_PRUNE_JOB_ID, OFFSITE_CHECK_JOB_ID):
                self._jobs.remove(job_id)
            return
        for job_id, cron, function in (
            (OFFSITE_PRUNE_JOB_ID, config.offsite.prune_cron, self._service.prune),
            (OFFSITE_CHECK_JOB_ID, config.offsite.check_cron, self._service.check),
        ):
            trigger = build_trigger(cron, config.schedule.timezone) if cron else None
            grace = config.schedule.misfire_grace_seconds
            self._jobs.place(job_id, function, trigger, grace, name=job_id)

    def submit(self, user: User) -> None:
        """Queue `user`'s offsite sync (the pass goes on to the next user at once)."""
        if self._service is not None:
            self._service.submit(user)

    def set_users(self, users: Sequence[User]) -> None:
        if self._service is not None:
            self._service.set_users(users)
