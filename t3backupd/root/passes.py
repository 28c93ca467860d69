"""Passes: the snapshot, verify and inventory jobs of every user, through one runner.

Used by both the CLI and the daemon, so there is one way a snapshot is taken, one way
snapshots are verified, one way a user's snapshots are listed. Each user's outcome is
one log event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from t3backupd.core.checks import verify_failures
from t3backupd.core.config import Config
from t3backupd.core.jobs import adopt_spec, inventory_spec, snapshot_spec, verify_spec
from t3backupd.core.protocol import SCHEMA_HOLD, STOPPED, SnapshotInfo, UserResult
from t3backupd.core.retention import is_future_dated
from t3backupd.core.usermap import User
from t3backupd.root import ledger
from t3backupd.root.log import get_logger
from t3backupd.root.runner import run_for_users, run_user_job
from t3backupd.root.spawn import ProcessTracker
from t3backupd.root.usage import DIR_SIZES, destination_space, human

MAX_NAMED = 5  # names listed in one log event


def snapshot_user(
    config: Config,
    user: User,
    label: str | None = None,
    tracker: ProcessTracker | None = None,
    accept_downgrade: bool = False,
) -> UserResult:
    """Snapshot one user and log the outcome as one event. `accept_downgrade`: the
    operator acknowledged a backwards schema step; the hold is lifted first."""
    if accept_downgrade:
        ledger.set_hold(config, user.name, None)
        get_logger().info("schema downgrade accepted", user=user.name)
    entries = ledger.load(ledger.ledger_dir(config), user.name)
    previous = ledger.previous_published(entries)
    held = ledger.load_hold(config, user.name)
    spec = snapshot_spec(
        config,
        user,
        label,
        previous=(previous.name, previous.schema_version or 0, previous.sha256)
        if previous
        else None,
        protect=ledger.names_from_version(entries, held) if held is not None else (),
        protect_on_downgrade=ledger.names_from_version(entries, previous.schema_version or 0)
        if previous
        else (),
    )
    result = run_user_job(config, user, spec, tracker)
    DIR_SIZES.record(user.name, result.report.dir_bytes)
    if result.report.ok:
        # Root accepted this publish: the one record of what may go offsite.
        ledger.record_published(config, user.name, result.report.snapshot, result.report.pruned)
        _record_guard(config, user.name, result.report.extra.get("schema_guard"), previous)
        held = _check_backwards(config, user.name, result.report.snapshot, previous, held)
    if held is not None:
        # Root's finding, never the worker's (the parser admits no such key from it).
        extra = {**result.report.extra, SCHEMA_HOLD: str(held)}
        result = replace(result, report=replace(result.report, extra=extra))
    if result.report.reason == "disk_space":
        result = replace(
            result,
            report=replace(result.report, message=_space_note(config, result.report.message)),
        )
    report = result.report
    fields = {
        "user": user.name,  # explicit too: capture_logs() in tests drops contextvars
        "status": report.status,
        "reason": report.reason,
        "bytes": report.snapshot.bytes if report.snapshot else None,
        "snapshot": report.snapshot.name if report.snapshot else None,
        "schema_version": report.snapshot.schema_version if report.snapshot else None,
        "duration_s": round(result.duration_s, 3),
    }
    log = get_logger()
    if report.status == "failed":
        log.error("snapshot", message=report.message, **fields)
    elif report.status in ("skipped", STOPPED):
        log.info("snapshot", message=report.message, **fields)
    else:
        log.info("snapshot", pruned=list(report.pruned), **fields)
    future = future_dated(report.snapshots)
    if future:
        log.warning(
            "future-dated snapshots",
            user=user.name,
            names=future[:MAX_NAMED],
            count=len(future),
            message="named after now (clock fault, or planted): kept, not counted by retention",
        )
    return result


def _check_backwards(
    config: Config,
    user: str,
    published: SnapshotInfo | None,
    previous: ledger.Entry | None,
    held: int | None,
) -> int | None:
    """A new snapshot with a lower schema version than root's previous one starts a hold
    (said once: later passes find the hold already there). Returns the held version."""
    new = published.schema_version if published is not None else None
    old = previous.schema_version if previous is not None else None
    if held is not None or new is None or old is None or new >= old:
        return held
    ledger.set_hold(config, user, old)
    get_logger().warning(
        "schema went backwards",
        user=user,
        schema_version=new,
        previous_schema_version=old,
        previous=previous.name if previous is not None else None,
        message=f"retention keeps the snapshots of schema {old} and above until "
        f"'t3backupd snapshot --user {user} --accept-schema-downgrade'",
    )
    return old


def _record_guard(
    config: Config, user: str, guard: str | None, previous: ledger.Entry | None
) -> None:
    """The schema guard the worker kept (of `previous`, the snapshot root named to it):
    into the ledger, and one log line."""
    if guard is None or previous is None:
        return
    ledger.record_guard(config, user, guard, previous)
    get_logger().info(
        "schema guard",
        user=user,
        snapshot=guard,
        kept_from=previous.name,
        schema_version=previous.schema_version,
        message="the schema moved forward: the last snapshot of the old version is kept",
    )


def _space_note(config: Config, message: str) -> str:
    """A disk_space message with who fills the destination and what is left there."""
    space = destination_space(config.dest)
    free = f"{human(space[0])} free in {config.dest}" if space is not None else ""
    largest = DIR_SIZES.describe_largest()
    parts = [part for part in (free, f"largest directories: {largest}" if largest else "") if part]
    return f"{message} ({'; '.join(parts)})" if parts else message


def future_dated(snapshots: Sequence[SnapshotInfo], now: float | None = None) -> list[str]:
    """Names of `snapshots` dated in the future (beyond the retention slack), sorted."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return sorted(
        info.name
        for info in snapshots
        if is_future_dated(datetime.fromtimestamp(info.time, UTC), moment)
    )


def verify_user(
    config: Config,
    user: User,
    latest_only: bool = False,
    quick: bool = False,
    tracker: ProcessTracker | None = None,
) -> UserResult:
    """Verify one user's snapshots with a worker running as the user; log one event.

    Never raises for the user's files: a problem is in the report (`verified` outcomes,
    or a failed report if the worker itself failed).
    """
    result = run_user_job(config, user, verify_spec(config, user, latest_only, quick), tracker)
    report = result.report
    failures = verify_failures(report)
    # `status` is the verdict on the user's snapshots, not only whether the job ran:
    # a job that found bad snapshots is "failed" with reason verify_failed.
    status, reason = report.status, report.reason
    if report.ok and failures:
        status, reason = "failed", "verify_failed"
    fields = {
        "user": user.name,
        "status": status,
        "reason": reason,
        "checked": len(report.verified),
        "failures": failures,
        "duration_s": round(result.duration_s, 3),
    }
    log = get_logger()
    if report.status == STOPPED:
        log.info("verify", message=report.message, **fields)
    elif report.status == "failed":
        log.error("verify", message=report.message, **fields)
    elif report.status == "skipped":
        log.warning("verify", message=report.message, **fields)
    else:
        bad = {r.name: r.outcome for r in report.verified if r.outcome != "ok"}
        (log.warning if bad else log.info)("verify", bad=bad, **fields)
    return result


def inventory_user(config: Config, user: User, tracker: ProcessTracker | None = None) -> UserResult:
    """The user's snapshots, listed by a worker running as the user. No directory: a
    `skipped` (`no_directory`) result, with nothing created."""
    result = run_user_job(config, user, inventory_spec(config, user), tracker)
    DIR_SIZES.record(user.name, result.report.dir_bytes)
    return result


def adopt_user(config: Config, user: User, tracker: ProcessTracker | None = None) -> UserResult:
    """Write the missing checksums of the user's snapshots (worker as the user); log it."""
    result = run_user_job(config, user, adopt_spec(config, user), tracker)
    report = result.report
    adopted = [r.name for r in report.verified if r.outcome == "ok"]
    refused = {r.name: r.outcome for r in report.verified if r.outcome != "ok"}
    log = get_logger()
    (log.info if report.ok and not refused else log.warning)(
        "adopt",
        user=user.name,
        status=report.status,
        reason=report.reason,
        message=report.message,
        adopted=adopted,
        refused=refused,
        duration_s=round(result.duration_s, 3),
    )
    return result


def run_adopt(
    config: Config, users: Sequence[User], tracker: ProcessTracker | None = None
) -> list[UserResult]:
    """Adopt every user's legacy snapshots, one user at a time."""
    tracker = tracker if tracker is not None else ProcessTracker()
    return run_for_users(
        users,
        lambda user: adopt_user(config, user, tracker),
        concurrency=1,
        tracker=tracker,
        action="adopt",
    )


def run_pass(
    config: Config,
    users: Sequence[User],
    label: str | None = None,
    tracker: ProcessTracker | None = None,
    on_result: Callable[[UserResult], None] | None = None,
    accept_downgrade: bool = False,
) -> list[UserResult]:
    """Snapshot every user, `config.snapshot.concurrency` at a time, in usermap order."""
    tracker = tracker if tracker is not None else ProcessTracker()
    return run_for_users(
        users,
        lambda user: snapshot_user(config, user, label, tracker, accept_downgrade),
        concurrency=config.snapshot.concurrency,
        tracker=tracker,
        on_result=on_result,
        action="snapshot",
    )


def run_verify_pass(
    config: Config,
    users: Sequence[User],
    latest_only: bool = False,
    quick: bool = False,
    tracker: ProcessTracker | None = None,
    on_result: Callable[[UserResult], None] | None = None,
) -> list[UserResult]:
    """Verify every user's snapshots, `config.snapshot.concurrency` users at a time.

    The daemon's scheduled verification calls this with the defaults (every snapshot,
    full integrity_check) and records each result in `on_result`.
    """
    tracker = tracker if tracker is not None else ProcessTracker()
    return run_for_users(
        users,
        lambda user: verify_user(config, user, latest_only, quick, tracker),
        concurrency=config.snapshot.concurrency,
        tracker=tracker,
        on_result=on_result,
        action="verify",
    )


def run_inventory(
    config: Config,
    users: Sequence[User],
    concurrency: int,
    tracker: ProcessTracker | None = None,
    on_result: Callable[[UserResult], None] | None = None,
) -> list[UserResult]:
    """List every user's snapshots, `concurrency` users at a time."""
    tracker = tracker if tracker is not None else ProcessTracker()
    return run_for_users(
        users,
        lambda user: inventory_user(config, user, tracker),
        concurrency=concurrency,
        tracker=tracker,
        on_result=on_result,
        action="inventory",
    )
