"""Which snapshots to delete: a pure decision, no disk access.

Policy (documented in docs/design.md, "Retention"):
- labelled snapshots are never pruned automatically;
- the newest `keep` unlabelled snapshots are kept;
- `keep_hourly`/`keep_daily`/`keep_weekly`/`keep_monthly` (restic style) additionally
  keep the newest unlabelled snapshot of each of the newest N hours / days / ISO weeks /
  months that have one (calendar periods in UTC);
- names in `protect` (the snapshot just published) are never pruned;
- order is by the timestamp parsed from the name, never by mtime or string;
- names dated more than FUTURE_SLACK after `now` (a clock fault, or a user's doing) are
  kept and not counted: they never push a current snapshot out of `keep` or a period.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from t3backupd.core.naming import SnapshotName, guard_version

# A snapshot dated later than this after "now" is future-dated.
FUTURE_SLACK = timedelta(minutes=5)


def is_future_dated(when: datetime, now: datetime) -> bool:
    """Whether a snapshot time is in the future (beyond the slack) as seen at `now`."""
    return when > now + FUTURE_SLACK


def is_future_timestamp(seconds: float, now: float) -> bool:
    """`is_future_dated` for epoch seconds (what reports, metrics and the state file hold)."""
    return seconds > now + FUTURE_SLACK.total_seconds()


Item = TypeVar("Item")


def newest_current(
    items: Iterable[Item], time_of: Callable[[Item], float], now: float
) -> Item | None:
    """The newest of `items` (by `time_of`, epoch seconds) that is not future-dated at
    `now`, or None: what "newest" means for metrics, the state file and catch-up."""
    current = [item for item in items if not is_future_timestamp(time_of(item), now)]
    return max(current, key=time_of, default=None)


@dataclass(frozen=True)
class RetentionPolicy:
    """How many unlabelled snapshots to keep per user."""

    keep: int = 14
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    # Schema guards (`--schema-N`, kept at each forward schema step) kept per user.
    keep_schema_guards: int = 3


def _newest_per_period(
    ordered: Sequence[SnapshotName], count: int, period: Callable[[datetime], Hashable]
) -> set[str]:
    """Names of the newest snapshot in each of the `count` newest periods."""
    kept: set[str] = set()
    seen: set[Hashable] = set()
    for snapshot in ordered:
        if len(seen) >= count:
            break
        key = period(snapshot.time)
        if key not in seen:
            seen.add(key)
            kept.add(snapshot.filename)
    return kept


def select_expired(
    snapshots: Iterable[SnapshotName],
    policy: RetentionPolicy,
    protect: Iterable[str] = (),
    now: datetime | None = None,
) -> list[SnapshotName]:
    """Return the snapshots the policy lets go, oldest first.

    `snapshots` are parsed names of one user's directory (non-matching files never
    reach this function, so they are never touched). With `now`, future-dated names
    are left out entirely: neither pruned nor counted.
    """
    candidates = sorted(
        (
            snapshot
            for snapshot in snapshots
            if snapshot.label is None and (now is None or not is_future_dated(snapshot.time, now))
        ),
        key=lambda snapshot: (snapshot.time, snapshot.filename),
        reverse=True,
    )
    kept = {snapshot.filename for snapshot in candidates[: policy.keep]}
    kept |= set(protect)
    if candidates:
        # The newest unlabelled snapshot is always kept, whatever the policy says.
        kept.add(candidates[0].filename)
    kept |= _newest_per_period(candidates, policy.keep_hourly, lambda t: (t.date(), t.hour))
    kept |= _newest_per_period(candidates, policy.keep_daily, lambda t: t.date())
    kept |= _newest_per_period(candidates, policy.keep_weekly, lambda t: t.isocalendar()[:2])
    kept |= _newest_per_period(candidates, policy.keep_monthly, lambda t: (t.year, t.month))
    expired = [snapshot for snapshot in candidates if snapshot.filename not in kept]
    return sorted(expired, key=lambda snapshot: (snapshot.time, snapshot.filename))


def select_expired_guards(snapshots: Iterable[SnapshotName], keep: int) -> list[SnapshotName]:
    """The schema guards (`--schema-N` labels) beyond the newest `keep`, oldest first.
    Guards are labelled, so count/GFS retention never reaches them; only this does."""
    guards = sorted(
        (s for s in snapshots if guard_version(s.label) is not None),
        key=lambda s: (s.time, s.filename),
        reverse=True,
    )
    return sorted(guards[keep:], key=lambda s: (s.time, s.filename))
