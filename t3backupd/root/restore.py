"""Restore, root side: `restore --to` and `restore --in-place` as workers run as the user.

In place is two workers: a check-only worker chooses the snapshot, verifies it and looks
for processes holding the database; a second worker repeats the checks, takes the live
database's write lock (BEGIN IMMEDIATE), takes the `pre-restore` snapshot of its
committed state, replaces its contents with the snapshot's in that same transaction and
commits. No commit of the app can land between the safety snapshot and the restore: it
is in the safety snapshot, or it waits (busy) and applies on top of the restored state.
The root parent never opens a path of the user's.

From offsite (`StreamedCopy`), the same two calls take the copy's bytes on a stream
instead of a local file: `--to` writes and verifies them as a local `--to` does; in
place, one worker receives and verifies them in a temp, refuses while the app holds the
database (as the check worker does), and then takes the one in-place path above.
`--at` (`chosen_at`) turns a time into the exact snapshot name before any of this.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

import structlog

from t3backupd.core.config import DEFAULT_CONFIG_PATH, Config
from t3backupd.core.errors import T3BackupError, UsageError
from t3backupd.core.jobs import inventory_spec, restore_spec
from t3backupd.core.naming import parse_name
from t3backupd.core.protocol import Report, RestoreSpec, failed
from t3backupd.core.retention import is_future_dated
from t3backupd.core.selection import (
    choose_at,
    parse_at,
    parse_snapshot_request,
    pick_at,
    pick_before_schema,
    skipped_line,
    undo_command,
)
from t3backupd.core.usermap import User
from t3backupd.root import ledger
from t3backupd.root.log import get_logger
from t3backupd.root.runner import run_user_job
from t3backupd.root.scheduler import resolve_timezone


@dataclass(frozen=True)
class AtMoment:
    """`--at`: the instant meant, in the config's time zone (named as in the config)."""

    instant: datetime
    zone: tzinfo
    zone_name: str


def at_moment(config: Config, text: str) -> AtMoment:
    """`--at TEXT` in the config's `[schedule] timezone` (the cron's). Raises UsageError
    for a malformed or nonexistent (DST gap) time; a repeated one means the earlier."""
    name = config.schedule.timezone
    zone = resolve_timezone(name)
    return AtMoment(parse_at(text, zone, name), zone, name)


def chosen_at(moment: AtMoment, copies: Sequence[tuple[float, str]]) -> str:
    """The newest of `copies` ((epoch seconds, name)) at or before `moment` that is not
    future-dated now. Raises SnapshotNotFound (one line naming the oldest copy's time)."""
    return choose_at(copies, moment.instant, moment.zone)


def local_at(config: Config, user: User, moment: AtMoment) -> tuple[str, str | None]:
    """The name of `user`'s newest local snapshot at or before `moment` that is not
    future-dated (listed by a worker as the user), and the future-dated one passed over
    (or None). Raises SnapshotNotFound or T3BackupError."""
    report = run_user_job(config, user, inventory_spec(config, user), None).report
    if report.reason == "no_directory":
        return chosen_at(moment, []), None
    if not report.ok:
        raise T3BackupError(
            f"cannot list {user.name}'s snapshots: {report.reason}: {report.message}"
        )
    copies = [(info.time, info.name) for info in report.snapshots]
    return pick_at(copies, moment.instant, moment.zone, datetime.now(UTC))


def local_before_schema(config: Config, user: User, version: int) -> str:
    """`--before-schema N`: the newest local snapshot of `user` whose schema version, as
    root's ledger recorded it when it published the snapshot (never the user's files),
    is below N, among those a listing still shows. Raises SnapshotNotFound or
    T3BackupError."""
    listed_at = time.time()
    report = run_user_job(config, user, inventory_spec(config, user), None).report
    if not report.ok and report.reason != "no_directory":
        raise T3BackupError(
            f"cannot list {user.name}'s snapshots: {report.reason}: {report.message}"
        )
    present = ledger.still_present(config, user.name, [i.name for i in report.snapshots], listed_at)
    copies = [
        (parsed.time.timestamp(), e.name, e.schema_version)
        for e in present.values()
        if (parsed := parse_name(e.name)) is not None
    ]
    return pick_before_schema(copies, version, datetime.now(UTC))


@dataclass(frozen=True)
class StreamedCopy:
    """A restore's source that is not a local snapshot (an offsite copy): its exact
    snapshot name, and how to run a restore worker with its bytes on the spec's stream."""

    name: str
    run: Callable[[RestoreSpec], Report]


def future_note(report: Report, now: float | None = None) -> str | None:
    """A warning line when the snapshot restored is dated in the future (only when named
    exactly: `latest`, labels and `--at` never pick one)."""
    parsed = parse_name(report.extra.get("restored_from", ""))
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if parsed is None or not is_future_dated(parsed.time, moment):
        return None
    return (
        f"note: {parsed.filename} is dated in the future ({parsed.time:%Y-%m-%d %H:%M:%SZ}): "
        "a clock fault, or a planted name; its content may be older than its name says"
    )


def skipped_note(name: str | None) -> str | None:
    """The one line saying `latest` (or `--at`) passed over the future-dated snapshot
    `name` (a worker's `skipped_future`, or `local_at`'s), or None."""
    parsed = parse_name(name) if name is not None else None
    return None if parsed is None else skipped_line(parsed.filename, parsed.time)


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


def _run(
    config: Config, user: User, streamed: StreamedCopy | None
) -> Callable[[RestoreSpec], Report]:
    if streamed is not None:
        return streamed.run
    return lambda spec: run_user_job(config, user, spec, None).report


def restore_to(
    config: Config,
    user: User,
    request: str,
    target: str,
    streamed: StreamedCopy | None = None,
) -> Report:
    """Restore `user`'s snapshot `request` (or the `streamed` copy) to the new file
    `target` (absolute).

    Raises UsageError if `request` is not a valid --snapshot value or `target` is
    relative; everything else is in the report.
    """
    parse_snapshot_request(request)
    if not os.path.isabs(target):
        raise UsageError(f"--to {target!r}: give an absolute path")
    refuse_target_in_dest(config, target)
    if streamed is not None:
        request = streamed.name
    with structlog.contextvars.bound_contextvars(user=user.name):
        report = _run(config, user, streamed)(restore_spec(config, user, request, target=target))
        _log(report, mode="to", origin=_origin(streamed), target=target)
    return report


def _within(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def refuse_target_in_dest(config: Config, target: str) -> None:
    """Refuse a `--to` path in the backup destination: a file restored there would be
    taken for a snapshot (`state-2099...sqlite` as "latest"), or pruned.

    Both spellings of each path count: `..` folded by the words (what the operator
    reads) and by the kernel through symlinks (realpath: lstat and readlink only, no
    open, on a path that may be the user's). Raises T3BackupError (exit 1, nothing run).
    """
    roots = {os.path.normpath(config.dest), os.path.realpath(config.dest)}
    if _within(os.path.normpath(target), roots) or _within(os.path.realpath(target), roots):
        raise T3BackupError(
            f"restore refused: --to {target} is inside the backup directory {config.dest} "
            "(dest), where it would count as a snapshot; restore to a path outside it"
        )


def _origin(streamed: StreamedCopy | None) -> str:
    return "local" if streamed is None else "offsite"


@dataclass(frozen=True)
class InPlaceResult:
    """An in-place restore: the final report, the pre-restore snapshot taken (if any), and
    the future-dated snapshot the choice passed over (if any)."""

    report: Report
    pre_restore: str | None
    undo: str | None
    skipped_future: str | None = None


def _checked_choice(
    config: Config, user: User, request: str, force: bool
) -> Report | tuple[str, str | None]:
    """Step 1 for a local snapshot: the check worker's choice (a name, and the
    future-dated one it skipped), or its report."""
    check = run_user_job(
        config,
        user,
        restore_spec(config, user, request, in_place=True, check_only=True, force=force),
        None,
    ).report
    if not check.ok:
        _log(check, mode="in-place", phase="check")
        return check
    chosen = check.extra.get("restored_from")  # if there, the parser checked the name
    if chosen is None:
        # A well-formed report that names no snapshot: the worker is not ours to trust.
        report = failed(
            "restore",
            "worker_crashed",
            "the check worker's report names no snapshot; nothing was restored",
        )
        _log(report, mode="in-place", phase="check")
        return report
    return chosen, check.extra.get("skipped_future")


def restore_in_place(
    config: Config,
    user: User,
    request: str,
    force: bool = False,
    streamed: StreamedCopy | None = None,
) -> InPlaceResult:
    """Restore `user`'s snapshot `request` (or the `streamed` copy) into their live
    database.

    1. check (worker): choose + verify the snapshot; refuse if a process of the user has
       the database open (unless `force`). For a streamed copy, the restore worker does
       this itself, before it reads the stream and again before the swap;
    2. restore (worker): repeat the checks on the exact snapshot chosen in 1 (a streamed
       copy: receive it into a temp, size and sha256 as recorded, quick_check); under
       the live database's write lock, take a `pre-restore` snapshot, replace the
       contents with the snapshot's, commit; verify the result.
    Nothing is written to the live database when 1 or the pre-restore snapshot fails.
    Raises UsageError for an invalid `request`.
    """
    parse_snapshot_request(request)
    clock = time.monotonic()
    skipped = None
    with structlog.contextvars.bound_contextvars(user=user.name):
        if streamed is None:
            choice = _checked_choice(config, user, request, force)
            if isinstance(choice, Report):
                return InPlaceResult(choice, None, None)
            chosen, skipped = choice
        else:
            chosen = streamed.name
        # One worker takes the pre-restore snapshot and restores, holding the live
        # database's write lock from before the one to after the other.
        report = _run(config, user, streamed)(
            restore_spec(config, user, chosen, in_place=True, force=force, safety_snapshot=True)
        )
        pre_name = report.extra.get("pre_restore")  # if there, the parser checked the name
        ledger.record_pre_restore(config, user.name, report.extra)
        config_path = None if config.path == str(DEFAULT_CONFIG_PATH) else config.path
        undo = undo_command(user.name, config_path) if pre_name is not None else None
        _log(
            report,
            mode="in-place",
            origin=_origin(streamed),
            pre_restore=pre_name,
            duration_s=round(time.monotonic() - clock, 3),
        )
    return InPlaceResult(report, pre_name, undo, skipped)
