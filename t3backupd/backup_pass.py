"""One pass: a snapshot worker per user, bounded concurrency, one log event per user.

Used by both the CLI's `snapshot` and the daemon's scheduled job, so there is only one
way a snapshot is taken. Each user is isolated: a failure is reported and counted,
never stops the others.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from t3backupd.config import Config
from t3backupd.log import get_logger
from t3backupd.protocol import JobSpec, Report, failed
from t3backupd.spawn import DirectoryRefused, ProcessTracker, prepare_user_dir, run_worker
from t3backupd.usermap import User

# Parent-side slack on top of the worker's own deadline before it is killed.
TIMEOUT_SLACK_SECONDS = 10.0


@dataclass(frozen=True)
class UserResult:
    user: User
    report: Report
    started: float  # wall-clock epoch seconds
    duration_s: float


def snapshot_spec(config: Config, user: User, dest_dir: str, label: str | None) -> JobSpec:
    """The job spec of one user's snapshot under `config`."""
    return JobSpec(
        action="snapshot",
        user=user.name,
        dest_dir=dest_dir,
        source=config.source_for(user.name, user.home),
        method=config.snapshot.method,
        verify=config.snapshot.verify,
        timeout_seconds=float(config.snapshot.timeout_seconds),
        min_free_bytes=config.snapshot.min_free_bytes,
        label=label,
        keep=config.retention.keep,
        keep_daily=config.retention.keep_daily,
        keep_weekly=config.retention.keep_weekly,
        keep_monthly=config.retention.keep_monthly,
    )


def run_user_job(
    config: Config,
    user: User,
    build_spec: Callable[[str], JobSpec],
    tracker: ProcessTracker | None,
) -> Report:
    """Prepare the user's dir (as root), then run one worker as the user."""
    try:
        dest_dir = prepare_user_dir(config.dest, user)
    except DirectoryRefused as error:
        return failed(build_spec("").action, "permission", str(error))
    except OSError as error:
        return failed(build_spec("").action, "permission", f"{config.dest}: {error.strerror}")
    spec = build_spec(dest_dir)
    return run_worker(spec, user, spec.timeout_seconds + TIMEOUT_SLACK_SECONDS, tracker)


def snapshot_user(
    config: Config,
    user: User,
    label: str | None = None,
    tracker: ProcessTracker | None = None,
) -> UserResult:
    """Snapshot one user and log the outcome as one event."""
    log = get_logger()
    started = time.time()
    clock = time.monotonic()
    with structlog.contextvars.bound_contextvars(user=user.name):
        report = run_user_job(
            config, user, lambda dest_dir: snapshot_spec(config, user, dest_dir, label), tracker
        )
        duration = time.monotonic() - clock
        fields = {
            "status": report.status,
            "reason": report.reason,
            "bytes": report.snapshot.bytes if report.snapshot else None,
            "snapshot": report.snapshot.name if report.snapshot else None,
            "duration_s": round(duration, 3),
        }
        if report.status == "failed":
            log.error("snapshot", message=report.message, **fields)
        elif report.status == "skipped":
            log.info("snapshot", message=report.message, **fields)
        else:
            log.info("snapshot", pruned=list(report.pruned), **fields)
    return UserResult(user, report, started, duration)


def inventory_of(config: Config, user: User) -> Report:
    """The user's snapshots, listed by a worker running as the user (none if no dir)."""
    if not os.path.lexists(os.path.join(config.dest, user.name)):
        return Report(action="inventory", status="ok")

    def spec(dest_dir: str) -> JobSpec:
        return JobSpec(action="inventory", user=user.name, dest_dir=dest_dir, timeout_seconds=60.0)

    return run_user_job(config, user, spec, None)


def run_pass(
    config: Config,
    users: Sequence[User],
    label: str | None = None,
    tracker: ProcessTracker | None = None,
    on_result: Callable[[UserResult], None] | None = None,
) -> list[UserResult]:
    """Snapshot every user, `config.snapshot.concurrency` at a time, in usermap order.

    Once `tracker.stopping` is set, users not yet started are left out of the result
    (not attempted, not counted).
    """

    tracker = tracker if tracker is not None else ProcessTracker()

    def one(user: User) -> UserResult | None:
        if tracker.stopping.is_set():
            return None
        result = snapshot_user(config, user, label, tracker)
        # A worker stopped because we are stopping did not fail on its own: not counted.
        if on_result is not None and not tracker.stopping.is_set():
            on_result(result)
        return result

    with ThreadPoolExecutor(
        max_workers=config.snapshot.concurrency, thread_name_prefix="snapshot"
    ) as pool:
        # Each user's job runs in a copy of the caller's context, so the pass's bound
        # log context (pass id, trigger) reaches every per-user event.
        futures = [pool.submit(contextvars.copy_context().run, one, user) for user in users]
        try:
            results = [future.result() for future in futures]
        except BaseException:
            # Ctrl-C in the CLI: stop the running workers (they remove their temp files)
            # and start no more, instead of waiting for every queued user.
            tracker.terminate_all()
            for future in futures:
                future.cancel()
            raise
    return [result for result in results if result is not None]
