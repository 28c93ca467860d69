"""What goes offsite and what stays there: pure rules over names, sizes and the config.

Retention is the local policy's code (`select_expired`) applied to each user's own
copies, so one user's forget can only name that user's copies; only snapshots root
published are candidates for upload, and each user's copies are bounded
(`offsite.max_copies_per_user`, `max_bytes_per_user`, labelled copies included), as is
each user's time in a pass (`turn_seconds`). Nothing here runs a process or touches a
file: the sync (`sync.py`) acts on these answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from t3backupd.core.config import Config
from t3backupd.core.naming import parse_name
from t3backupd.core.offsite_config import OffsiteConfig
from t3backupd.core.retention import RetentionPolicy, select_expired
from t3backupd.root.ledger import Entry
from t3backupd.root.offsite.engine import OffsiteSnapshot


def offsite_policy(config: Config) -> RetentionPolicy:
    offsite = config.offsite
    if offsite is None:
        return RetentionPolicy()
    return RetentionPolicy(
        keep=offsite.keep_last,
        keep_hourly=offsite.keep_hourly,
        keep_daily=offsite.keep_daily,
        keep_weekly=offsite.keep_weekly,
        keep_monthly=offsite.keep_monthly,
    )


def expired_copies(snapshots: Sequence[OffsiteSnapshot], policy: RetentionPolicy) -> list[str]:
    """Ids of one user's copies the policy lets go (labelled ones never); a name stored
    twice keeps its newest copy."""
    by_name: dict[str, OffsiteSnapshot] = {}
    extra: list[str] = []
    for snapshot in snapshots:
        previous = by_name.get(snapshot.meta.name)
        if previous is not None:
            extra.append(previous.id)
        by_name[snapshot.meta.name] = snapshot
    parsed = [p for p in (parse_name(name) for name in by_name) if p is not None]
    expired = select_expired(parsed, policy)
    return extra + [by_name[p.filename].id for p in expired]


def to_upload(
    published: Iterable[Entry], offsite: Sequence[OffsiteSnapshot], policy: RetentionPolicy
) -> list[Entry]:
    """Snapshots root published (still present locally) not offsite yet that the offsite
    policy would keep, newest first."""
    present = {snapshot.meta.name for snapshot in offsite}
    by_name = {entry.name: entry for entry in published}
    parsed = [p for p in (parse_name(name) for name in set(by_name) | present) if p is not None]
    expired = {p.filename for p in select_expired(parsed, policy)}
    skip = present | expired
    missing = [p for p in parsed if p.filename in by_name and p.filename not in skip]
    missing.sort(key=lambda p: (p.time, p.filename), reverse=True)
    return [by_name[p.filename] for p in missing]


def quota_problem(copies: int, used: int, entry: Entry, offsite: OffsiteConfig) -> str | None:
    """Why uploading `entry` would pass the user's bound (`copies` copies of `used` bytes
    kept offsite so far, labelled ones included), or None."""
    limit, limit_bytes = offsite.max_copies_per_user, offsite.max_bytes_per_user
    if limit and copies + 1 > limit:
        return (
            f"{entry.name}: not uploaded, {copies} copies offsite already "
            f"(offsite.max_copies_per_user = {limit}; labelled copies count and are never "
            "forgotten: forget some by hand or raise the bound)"
        )
    if limit_bytes and used + entry.size > limit_bytes:
        return (
            f"{entry.name}: not uploaded, {used} + {entry.size} bytes would pass "
            f"offsite.max_bytes_per_user = {limit_bytes} (labelled copies count and are never "
            "forgotten: forget some by hand or raise the bound)"
        )
    return None


# Upload failures after which the user's turn in the pass is over.
ENDS_TURN = ("timeout", "unreachable", "auth", "no_repository", "no_space", "read_only")


def turn_seconds(config: Config) -> int:
    """How long one user's uploads may take in a pass (`offsite.user_turn_seconds`, 0 =
    `offsite.timeout_seconds`)."""
    offsite = config.offsite
    if offsite is None:
        return 0
    return offsite.user_turn_seconds or offsite.timeout_seconds
