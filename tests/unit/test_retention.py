"""Which snapshots retention lets go (t3backupd.core.retention): properties over generated
directories mixing current, labelled and legacy (local-time) names."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from t3backupd.core.errors import SnapshotNotFound
from t3backupd.core.naming import SnapshotName, format_name, parse_name
from t3backupd.core.retention import RetentionPolicy, select_expired, select_expired_guards
from t3backupd.core.selection import pick_before_schema

BERLIN = ZoneInfo("Europe/Berlin")


def parse(filename: str) -> SnapshotName:
    parsed = parse_name(filename, local_tz=BERLIN)
    assert parsed is not None, filename
    return parsed


@st.composite
def snapshot_names(draw: st.DrawFn) -> SnapshotName:
    when = draw(
        st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31))
    ).replace(microsecond=0)
    kind = draw(st.sampled_from(["current", "current", "labelled", "legacy"]))
    if kind == "legacy":
        return parse(f"state-{when:%Y%m%d-%H%M%S}.sqlite")
    label = draw(st.sampled_from(["pre-upgrade", "pre-restore", "manual.1"]))
    return parse(format_name(when.replace(tzinfo=UTC), label if kind == "labelled" else None))


directories = st.lists(
    snapshot_names(),
    max_size=40,
    unique_by=(lambda snapshot: snapshot.filename, lambda snapshot: snapshot.time),
)
# Clustered in a few days so that keep_daily has several snapshots per day to choose from.
clustered_directories = st.lists(
    st.builds(
        lambda day, second, legacy: (
            parse(
                f"state-{datetime(2026, 3, 1) + timedelta(days=day, seconds=second):%Y%m%d-%H%M%S}"
                ".sqlite"
            )
            if legacy
            else parse(
                format_name(datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=day, seconds=second))
            )
        ),
        st.integers(0, 9),
        st.integers(0, 86_399),
        st.booleans(),
    ),
    max_size=40,
    unique_by=(lambda snapshot: snapshot.filename, lambda snapshot: snapshot.time),
)


def kept_after(
    snapshots: list[SnapshotName], policy: RetentionPolicy, protect: Iterable[str] = ()
) -> set[str]:
    expired = select_expired(snapshots, policy, protect)
    return {snapshot.filename for snapshot in snapshots} - {
        snapshot.filename for snapshot in expired
    }


def newest_unlabelled(snapshots: list[SnapshotName], count: int) -> set[str]:
    unlabelled = sorted(
        (snapshot for snapshot in snapshots if snapshot.label is None),
        key=lambda snapshot: snapshot.time,
        reverse=True,
    )
    return {snapshot.filename for snapshot in unlabelled[:count]}


# --- properties -----------------------------------------------------------------------


@given(snapshots=directories, keep=st.integers(0, 20), daily=st.integers(0, 5))
def test_labelled_snapshots_are_never_pruned(
    snapshots: list[SnapshotName], keep: int, daily: int
) -> None:
    expired = select_expired(snapshots, RetentionPolicy(keep=keep, keep_daily=daily))
    assert all(snapshot.label is None for snapshot in expired)


@given(snapshots=directories, keep=st.integers(0, 20))
def test_newest_unlabelled_snapshot_is_never_pruned_whatever_keep_says(
    snapshots: list[SnapshotName], keep: int
) -> None:
    kept = kept_after(snapshots, RetentionPolicy(keep=keep))
    assert newest_unlabelled(snapshots, 1) <= kept


@given(snapshots=directories, keep=st.integers(0, 5), data=st.data())
def test_protected_names_are_never_pruned(
    snapshots: list[SnapshotName], keep: int, data: st.DataObject
) -> None:
    protect = (
        data.draw(st.sets(st.sampled_from([s.filename for s in snapshots]))) if snapshots else set()
    )
    kept = kept_after(snapshots, RetentionPolicy(keep=keep), protect)
    assert protect <= kept


@given(snapshots=directories, keep=st.integers(1, 20))
def test_exactly_the_newest_keep_unlabelled_are_kept_by_parsed_time(
    snapshots: list[SnapshotName], keep: int
) -> None:
    kept = kept_after(snapshots, RetentionPolicy(keep=keep))
    unlabelled = {snapshot.filename for snapshot in snapshots if snapshot.label is None}
    assert kept & unlabelled == newest_unlabelled(snapshots, keep)
    assert len(kept & unlabelled) == min(keep, len(unlabelled))


@given(snapshots=directories, keep=st.integers(0, 20), daily=st.integers(0, 5))
def test_result_is_a_subset_of_the_input_oldest_first_without_duplicates(
    snapshots: list[SnapshotName], keep: int, daily: int
) -> None:
    expired = select_expired(snapshots, RetentionPolicy(keep=keep, keep_daily=daily))
    assert set(expired) <= set(snapshots)
    assert len({snapshot.filename for snapshot in expired}) == len(expired)
    times = [snapshot.time for snapshot in expired]
    assert times == sorted(times)


@given(snapshots=directories, keep=st.integers(1, 20))
def test_input_order_does_not_matter(snapshots: list[SnapshotName], keep: int) -> None:
    policy = RetentionPolicy(keep=keep)
    assert select_expired(snapshots, policy) == select_expired(list(reversed(snapshots)), policy)


@given(snapshots=clustered_directories, keep=st.integers(1, 5), days=st.integers(1, 12))
def test_keep_daily_keeps_the_newest_of_each_of_the_newest_n_days_on_top_of_keep(
    snapshots: list[SnapshotName], keep: int, days: int
) -> None:
    newest_per_day: dict[date, SnapshotName] = {}
    for snapshot in snapshots:
        day = snapshot.time.date()  # calendar days in UTC
        if day not in newest_per_day or snapshot.time > newest_per_day[day].time:
            newest_per_day[day] = snapshot
    newest_days = sorted(newest_per_day, reverse=True)[:days]
    expected = newest_unlabelled(snapshots, keep) | {
        newest_per_day[day].filename for day in newest_days
    }
    assert kept_after(snapshots, RetentionPolicy(keep=keep, keep_daily=days)) == expected


# --- examples -------------------------------------------------------------------------


def test_order_is_by_parsed_time_not_by_string() -> None:
    # Legacy names are local time (Berlin, CET = UTC+1); "-" sorts before "T".
    legacy = parse("state-20260101-030000.sqlite")  # 02:00 UTC: the newer one
    current = parse("state-20260101T013000Z.sqlite")  # 01:30 UTC
    assert legacy.filename < current.filename
    assert legacy.time > current.time
    assert select_expired([current, legacy], RetentionPolicy(keep=1)) == [current]


def test_legacy_names_are_pruned_like_any_other() -> None:
    snapshots = [parse(f"state-202601{day:02d}-033000.sqlite") for day in range(1, 6)]
    expired = select_expired(snapshots, RetentionPolicy(keep=2))
    assert [snapshot.filename for snapshot in expired] == [
        "state-20260101-033000.sqlite",
        "state-20260102-033000.sqlite",
        "state-20260103-033000.sqlite",
    ]


def test_fourteen_nightly_snapshots_plus_one_prunes_the_oldest() -> None:
    start = datetime(2026, 1, 1, 3, 30, tzinfo=UTC)
    snapshots = [parse(format_name(start + timedelta(days=day))) for day in range(15)]
    assert select_expired(snapshots, RetentionPolicy()) == [snapshots[0]]


def test_labelled_snapshots_do_not_count_towards_keep() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    labelled = [parse(format_name(start + timedelta(hours=hour), "pre-upgrade")) for hour in (5, 6)]
    plain = [parse(format_name(start + timedelta(hours=hour))) for hour in range(4)]
    expired = select_expired(labelled + plain, RetentionPolicy(keep=2))
    assert expired == plain[:2]


def test_just_published_snapshot_is_protected_even_if_it_sorts_old() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    snapshots = [parse(format_name(start + timedelta(days=day))) for day in range(5)]
    expired = select_expired(snapshots, RetentionPolicy(keep=1), protect=[snapshots[0].filename])
    assert expired == snapshots[1:4]


def test_keep_weekly_keeps_newest_of_each_iso_week() -> None:
    # 2026-01-05 is a Monday. Two snapshots in each of three ISO weeks.
    monday = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
    snapshots = [
        parse(format_name(monday + timedelta(weeks=week, days=day)))
        for week in range(3)
        for day in (0, 6)
    ]
    kept = kept_after(snapshots, RetentionPolicy(keep=1, keep_weekly=2))
    assert kept == {snapshots[5].filename, snapshots[3].filename}


def test_keep_monthly_keeps_newest_of_each_month() -> None:
    snapshots = [
        parse(format_name(datetime(2026, month, day, tzinfo=UTC)))
        for month in (1, 2, 3)
        for day in (1, 20)
    ]
    kept = kept_after(snapshots, RetentionPolicy(keep=1, keep_monthly=3))
    assert kept == {snapshots[1].filename, snapshots[3].filename, snapshots[5].filename}


def test_empty_directory_expires_nothing() -> None:
    assert select_expired([], RetentionPolicy()) == []


def test_default_policy_matches_the_legacy_script() -> None:
    assert RetentionPolicy() == RetentionPolicy(
        keep=14, keep_daily=0, keep_weekly=0, keep_monthly=0
    )


# --- future-dated names (issue 10): a clock fault, or planted names ------------------------


def test_future_dated_names_never_push_a_current_snapshot_out() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    current = [parse(format_name(now - timedelta(days=day))) for day in range(3)]
    future = [parse(format_name(now + timedelta(days=365 + day))) for day in range(5)]
    # keep=3: without `now`, the five future names are "the newest" and all three
    # current snapshots, the just-published one aside, would go.
    naive = select_expired(current + future, RetentionPolicy(keep=3), protect={current[0].filename})
    assert {current[1].filename, current[2].filename} <= {s.filename for s in naive}
    expired = select_expired(
        current + future, RetentionPolicy(keep=3), protect={current[0].filename}, now=now
    )
    assert expired == []  # the current three are the three kept; future ones untouched


def test_future_dated_names_are_never_pruned_and_current_retention_still_applies() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    current = [parse(format_name(now - timedelta(hours=hour))) for hour in range(6)]
    future = [parse(format_name(now + timedelta(minutes=minutes))) for minutes in (6, 60, 9999)]
    within_slack = parse(format_name(now + timedelta(minutes=4)))  # clock jitter: current
    expired = select_expired(current + future + [within_slack], RetentionPolicy(keep=2), now=now)
    names = {s.filename for s in expired}
    assert not names & {s.filename for s in future}
    # within_slack and current[0] are the newest two current ones; the rest go.
    assert names == {s.filename for s in current[1:]}


def test_hourly_history_under_the_documented_gfs_policy_keeps_48_hours_and_14_days() -> None:
    # The hourly configuration of docs/operations.md: 14 days of hourly snapshots (at
    # HH:30 UTC, 2026-11-17 00:30 .. 2026-11-30 23:30; 11-30 is a Monday) under
    # keep_last=3, keep_hourly=48, keep_daily=14, keep_weekly=8.
    start = datetime(2026, 11, 17, 0, 30, tzinfo=UTC)
    names = [
        parse(f"state-{(start + timedelta(hours=hour)):%Y%m%dT%H%M%SZ}.sqlite")
        for hour in range(14 * 24)
    ]
    policy = RetentionPolicy(keep=3, keep_hourly=48, keep_daily=14, keep_weekly=8)
    kept = kept_after(names, policy)
    # The newest 48 hours (all of 11-29 and 11-30), plus 23:30 of each earlier day
    # (11-17 .. 11-28); the ISO weeks' newest (11-22, 11-29, 11-30) are among those.
    hourly = {name.filename for name in names[-48:]}
    daily = {f"state-202611{day:02d}T233000Z.sqlite" for day in range(17, 29)}
    assert kept == hourly | daily
    assert len(kept) == 60


def test_only_schema_guards_beyond_the_newest_n_expire() -> None:
    names = [
        parse("state-20260101T000000Z--schema-24.sqlite"),
        parse("state-20260102T000000Z--schema-25.sqlite"),
        parse("state-20260103T000000Z--schema-26.sqlite"),
        parse("state-20260104T000000Z--pre-upgrade.sqlite"),
        parse("state-20250101T000000Z.sqlite"),
    ]
    expired = select_expired_guards(names, 2)
    assert [s.filename for s in expired] == ["state-20260101T000000Z--schema-24.sqlite"]
    assert select_expired_guards(names, 3) == []
    # Guards are labelled: count retention never reaches them.
    assert all(s.label is None for s in select_expired(names, RetentionPolicy(keep=1)))


def test_before_schema_picks_the_newest_below_the_version() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    copies = [(1.0e9, "a", 25), (1.1e9, "b", 26), (1.2e9, "c", 27), (1.3e9, "d", None)]
    assert pick_before_schema(copies, 27, now) == "b"
    assert pick_before_schema(copies, 26, now) == "a"
    with pytest.raises(SnapshotNotFound, match=r"below 25 \(versions seen: 25, 26, 27\)"):
        pick_before_schema(copies, 25, now)
