"""The per-user offsite job, one definition for the daemon's lane (`service.py`) and
`t3backupd offsite sync` alike: list the user's local snapshots (a worker as the user),
upload what root published that is missing offsite, then apply retention to that
user's copies.

The candidates come from root's ledger (what root published, `root.ledger`); the user's
listing, written by the user's own worker, only ever takes candidates away, so a user
cannot get a file of their choosing uploaded by naming it. What is offsite is always
read from the repository (`Engine.snapshots`), never from a local record: a copy
uploaded by a run that died is still seen, and a copy removed by hand is uploaded
again. An offsite problem never raises out of a user's job: it is in that user's
`UserOffsite.failures`, so one user's failure never ends another's turn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from t3backupd.core.config import Config
from t3backupd.core.jobs import inventory_spec, user_dir
from t3backupd.core.offsite_config import OffsiteConfig
from t3backupd.core.protocol import Report, SnapshotInfo, UserResult
from t3backupd.core.usermap import User
from t3backupd.root import ledger
from t3backupd.root.ledger import Entries, Entry
from t3backupd.root.log import get_logger
from t3backupd.root.offsite.engine import Engine, OffsiteError, OffsiteSnapshot
from t3backupd.root.offsite.policy import (
    ENDS_TURN,
    expired_copies,
    offsite_policy,
    quota_problem,
    to_upload,
    turn_seconds,
)
from t3backupd.root.offsite.seal import judged, usable
from t3backupd.root.offsite.upload import Uploaded, upload_snapshot
from t3backupd.root.runner import run_for_users, run_user_job
from t3backupd.root.spawn import ProcessTracker


@dataclass
class UserOffsite:
    """One user's offsite outcome in a pass."""

    user: User
    uploaded: list[Uploaded] = field(default_factory=list)
    failures: list[OffsiteError] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    snapshots: int | None = None  # copies in the repository afterwards (None: unknown)
    newest: float | None = None  # time of the newest copy
    quota_reached: bool = False  # an upload was refused for the per-user bound

    @property
    def ok(self) -> bool:
        return not self.failures


def sync_user(
    engine: Engine,
    config: Config,
    user: User,
    local: Sequence[SnapshotInfo],
    tracker: ProcessTracker | None = None,
    forget: bool = True,
    *,
    listed_at: float,
) -> UserOffsite:
    """Upload what root published (its ledger) that `local`, the listing started at
    `listed_at`, still shows and is missing offsite (newest first, within the user's
    bound and turn), then apply retention to this user's copies. Never raises for an
    offsite problem: it is in `failures`."""
    outcome = UserOffsite(user)
    log = get_logger()
    policy = offsite_policy(config)
    published = ledger.still_present(config, user.name, (i.name for i in local), listed_at)
    _note_unpublished(user, local, published)
    try:
        # A copy whose seal does not verify is not ours: it neither stands in for an
        # upload nor counts for retention (`offsite check` reports it).
        present = usable(judged(engine, user.name))
    except OffsiteError as error:
        outcome.failures.append(error)
        log.error("offsite list", user=user.name, reason=error.reason, message=error.message)
        return outcome
    _upload_pending(engine, config, outcome, to_upload(published.values(), present, policy),
                    present, tracker)  # fmt: skip
    if tracker is not None and tracker.stopping.is_set():
        return outcome
    try:
        copies = usable(judged(engine, user.name))
        if forget:
            expired = expired_copies(copies, policy)
            if expired:
                engine.forget(expired)
                outcome.forgotten = expired
                copies = [copy for copy in copies if copy.id not in set(expired)]
        outcome.snapshots = len(copies)
        outcome.newest = max((copy.meta.time for copy in copies), default=None)
    except OffsiteError as error:
        outcome.failures.append(error)
        log.error("offsite retention", user=user.name, reason=error.reason, message=error.message)
    return outcome


def _upload_pending(
    engine: Engine,
    config: Config,
    outcome: UserOffsite,
    pending: Sequence[Entry],
    present: Sequence[OffsiteSnapshot],
    tracker: ProcessTracker | None,
) -> None:
    """Upload `pending` (newest first) within the user's bound and turn (`turn_seconds`;
    a timeout ends it too, the rest waits for the next pass), into `outcome`."""
    user, log = outcome.user, get_logger()
    turn = turn_seconds(config)
    until = time.monotonic() + turn
    # The bound counts what retention keeps (labelled copies always), plus this pass's.
    leaving = set(expired_copies(present, offsite_policy(config)))
    held = [copy for copy in present if copy.id not in leaving]
    count, used = len(held), sum(copy.meta.size for copy in held)
    for index, info in enumerate(pending):
        if tracker is not None and tracker.stopping.is_set():
            break
        if time.monotonic() >= until:
            log.warning("offsite turn over", user=user.name, turn_seconds=turn,
                        left=len(pending) - index)  # fmt: skip
            break
        problem = quota_problem(count, used, info, config.offsite or OffsiteConfig())
        if problem is not None:
            outcome.quota_reached = True
            outcome.failures.append(OffsiteError("quota", problem))
            log.error("offsite upload", user=user.name, snapshot=info.name, reason="quota",
                      message=problem)  # fmt: skip
            break
        try:
            uploaded = upload_snapshot(engine, config, user, info, tracker, until)
        except OffsiteError as error:
            outcome.failures.append(error)
            log.error("offsite upload", user=user.name, snapshot=info.name,
                      reason=error.reason, message=error.message)  # fmt: skip
            # A timeout ends the user's turn: a stalled stream (the user's own pace)
            # costs the lane once a pass, not once per pending copy. The others: the
            # next one would fail the same way.
            if error.reason in ENDS_TURN:
                break
            continue
        outcome.uploaded.append(uploaded)
        count, used = count + 1, used + uploaded.meta.size
        log.info("offsite upload", user=user.name, snapshot=info.name,
                 bytes=uploaded.meta.size, bytes_added=uploaded.bytes_added, id=uploaded.id,
                 duration_s=round(uploaded.duration_s, 3))  # fmt: skip


def _note_unpublished(user: User, local: Sequence[SnapshotInfo], published: Entries) -> None:
    """One line for the user's snapshots root has no record of publishing (made before
    the ledger, adopted, or planted): they are never uploaded."""
    unknown = sorted(info.name for info in local if info.name not in published)
    if unknown:
        get_logger().info(
            "offsite not uploaded",
            user=user.name,
            count=len(unknown),
            names=unknown[:5],
            message="not published by root (before the ledger, adopted, or not root's): "
            "never uploaded; the next snapshot root publishes is",
        )


def local_snapshots(config: Config, user: User, tracker: ProcessTracker | None) -> Report:
    """The user's local snapshots, listed by a worker as the user."""
    if not os.path.lexists(user_dir(config, user)):
        return Report(action="inventory", status="ok")
    return run_user_job(config, user, inventory_spec(config, user), tracker).report


def user_job(
    engine: Engine,
    config: Config,
    tracker: ProcessTracker,
    on_result: Callable[[UserOffsite], None],
) -> Callable[[User], UserResult]:
    """The per-user offsite job for the one per-user runner (`run_for_users`): the
    user's local listing, then `sync_user`; each outcome goes to `on_result` (the lane's
    metrics and log, the CLI's lines) before the runner hears of it."""

    def job(user: User) -> UserResult:
        started, clock = time.time(), time.monotonic()
        inventory = local_snapshots(config, user, tracker)
        if not inventory.ok:
            outcome = UserOffsite(user)
            outcome.failures.append(
                OffsiteError("worker", f"cannot list local snapshots: {inventory.message}")
            )
        else:
            outcome = sync_user(
                engine, config, user, inventory.snapshots, tracker, listed_at=started
            )
        on_result(outcome)
        report = Report(action="stream", status="ok" if outcome.ok else "failed")
        return UserResult(user, report, started, time.monotonic() - clock)

    return job


def run_offsite_pass(
    engine: Engine,
    config: Config,
    users: Sequence[User],
    tracker: ProcessTracker | None = None,
    on_result: Callable[[UserOffsite], None] | None = None,
) -> list[UserOffsite]:
    """Every user's backfill + retention, `offsite.concurrency` users at a time, through
    the one per-user runner."""
    tracker = tracker if tracker is not None else ProcessTracker()
    outcomes: dict[str, UserOffsite] = {}
    concurrency = config.offsite.concurrency if config.offsite is not None else 1

    def keep(outcome: UserOffsite) -> None:
        outcomes[outcome.user.name] = outcome
        if on_result is not None:
            on_result(outcome)

    with suppress(OffsiteError):
        engine.unlock_stale()
    job = user_job(engine, config, tracker, keep)
    run_for_users(users, job, concurrency=concurrency, tracker=tracker, action="stream")
    return [outcomes[user.name] for user in users if user.name in outcomes]
