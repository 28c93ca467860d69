"""Restore, root side: `restore --to` and `restore --in-place` as workers run as the user.

In place is two workers: a check-only worker chooses the snapshot, verifies it and looks
for processes holding the database; a second worker repeats the checks, takes the live
database's write lock (BEGIN IMMEDIATE), takes the `pre-restore` snapshot of its
committed state, replaces its contents with the snapshot's in that same transaction and
commits. No commit of the app can land between the safety snapshot and the restore: it
is in the safety snapshot, or it waits (busy) and applies on top of the restored state.
The root parent never opens a path of the user's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from t3backupd.core.config import DEFAULT_CONFIG_PATH, Config
from t3backupd.core.errors import UsageError
from t3backupd.core.jobs import restore_spec
from t3backupd.core.naming import parse_name
from t3backupd.core.protocol import Report, failed
from t3backupd.core.retention import is_future_dated
from t3backupd.core.selection import parse_snapshot_request, undo_command
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger
from t3backupd.root.runner import run_user_job


def future_note(report: Report, now: float | None = None) -> str | None:
    """A warning line when the snapshot restored is dated in the future ("latest" picks by
    the time in the name: a clock fault, or a planted name, makes it the newest)."""
    parsed = parse_name(report.extra.get("restored_from", ""))
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if parsed is None or not is_future_dated(parsed.time, moment):
        return None
    return (
        f"note: {parsed.filename} is dated in the future ({parsed.time:%Y-%m-%d %H:%M:%SZ}); "
        "it was picked as the newest by its name: a clock fault, or a planted name"
    )


def _log(report: Report, **fields: object) -> None:
    log = get_logger()
    (log.info if report.ok else log.error)(
        "restore",
        status=report.status,
        reason=report.reason,
        message=report.message,
        snapshot=report.extra.get("restored_from"),
        **fields,
    )


def restore_to(config: Config, user: User, request: str, target: str) -> Report:
    """Restore `user`'s snapshot `request` to the new file `target` (absolute).

    Raises UsageError if `request` is not a valid --snapshot value or `target` is
    relative; everything else is in the report.
    """
    parse_snapshot_request(request)
    if not os.path.isabs(target):
        raise UsageError(f"--to {target!r}: give an absolute path")
    with structlog.contextvars.bound_contextvars(user=user.name):
        report = run_user_job(
            config, user, restore_spec(config, user, request, target=target), None
        ).report
        _log(report, mode="to", target=target)
    return report


@dataclass(frozen=True)
class InPlaceResult:
    """An in-place restore: the final report, and the pre-restore snapshot taken (if any)."""

    report: Report
    pre_restore: str | None
    undo: str | None


def restore_in_place(
    config: Config, user: User, request: str, force: bool = False
) -> InPlaceResult:
    """Restore `user`'s snapshot `request` into their live database.

    1. check (worker): choose + verify the snapshot; refuse if a process of the user has
       the database open (unless `force`);
    2. restore (worker): repeat the checks on the exact snapshot chosen in 1; under the
       live database's write lock, take a `pre-restore` snapshot, replace the contents
       with the snapshot's, commit; verify the result.
    Nothing is written to the live database when 1 or the pre-restore snapshot fails.
    Raises UsageError for an invalid `request`.
    """
    parse_snapshot_request(request)
    clock = time.monotonic()
    with structlog.contextvars.bound_contextvars(user=user.name):
        check = run_user_job(
            config,
            user,
            restore_spec(config, user, request, in_place=True, check_only=True, force=force),
            None,
        ).report
        if not check.ok:
            _log(check, mode="in-place", phase="check")
            return InPlaceResult(check, None, None)
        chosen = check.extra.get("restored_from")  # if there, the parser checked the name
        if chosen is None:
            # A well-formed report that names no snapshot: the worker is not ours to trust.
            report = failed(
                "restore",
                "worker_crashed",
                "the check worker's report names no snapshot; nothing was restored",
            )
            _log(report, mode="in-place", phase="check")
            return InPlaceResult(report, None, None)
        # One worker takes the pre-restore snapshot and restores, holding the live
        # database's write lock from before the one to after the other.
        report = run_user_job(
            config,
            user,
            restore_spec(config, user, chosen, in_place=True, force=force, safety_snapshot=True),
            None,
        ).report
        pre_name = report.extra.get("pre_restore")  # if there, the parser checked the name
        config_path = None if config.path == str(DEFAULT_CONFIG_PATH) else config.path
        undo = undo_command(user.name, config_path) if pre_name is not None else None
        _log(
            report,
            mode="in-place",
            pre_restore=pre_name,
            duration_s=round(time.monotonic() - clock, 3),
        )
    return InPlaceResult(report, pre_name, undo)
