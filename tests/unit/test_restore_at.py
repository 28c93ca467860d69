"""`restore --at`: the pure parse of the time (config time zone, DST) and the choice of
the newest copy at or before it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from t3backupd.core.errors import SnapshotNotFound, UsageError
from t3backupd.core.selection import LIST_TIME_FORMAT, choose_at, parse_at, pick_at

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01 14:00", datetime(2026, 12, 1, 13, 0, tzinfo=UTC)),  # CET = UTC+1
        ("2026-12-01 14:00:30", datetime(2026, 12, 1, 13, 0, 30, tzinfo=UTC)),
        ("2026-12-01", datetime(2026, 11, 30, 23, 0, tzinfo=UTC)),  # 00:00 that day
        ("2026-07-01 14:00", datetime(2026, 7, 1, 12, 0, tzinfo=UTC)),  # CEST = UTC+2
        # The hour that repeats when DST ends (25 Oct 2026, 03:00 CEST -> 02:00 CET):
        # 02:30 happens twice; --at means the earlier (CEST, 00:30 UTC).
        ("2026-10-25 02:30", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    ],
)
def test_parse_at_reads_a_wall_time_in_the_zone(text: str, expected: datetime) -> None:
    assert parse_at(text, BERLIN, "Europe/Berlin") == expected


def test_a_time_skipped_when_dst_begins_is_one_clear_line() -> None:
    # 29 Mar 2026: 02:00 CET -> 03:00 CEST, so 02:30 never happens in Berlin.
    with pytest.raises(UsageError) as error:
        parse_at("2026-03-29 02:30", BERLIN, "Europe/Berlin")
    message = str(error.value)
    assert "\n" not in message
    assert "2026-03-29 02:30" in message and "does not exist in Europe/Berlin" in message
    assert parse_at("2026-03-29 03:00", BERLIN, "Europe/Berlin") == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )


def test_the_time_list_prints_is_taken_as_printed_in_utc() -> None:
    """`list` prints '2026-12-01 14:00:30Z' (UTC); --at refused it (issue 21, 8)."""
    listed = datetime(2026, 12, 1, 14, 0, 30, tzinfo=UTC).strftime(LIST_TIME_FORMAT)
    assert listed == "2026-12-01 14:00:30Z"
    assert parse_at(listed, BERLIN, "Europe/Berlin") == datetime(2026, 12, 1, 14, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["2026-12-01T14:00", "14:00", "2026-13-01", "2026-12-01 25:00", "", "yesterday"]
)
def test_malformed_at_is_refused_with_the_formats(text: str) -> None:
    with pytest.raises(UsageError) as error:
        parse_at(text, UTC, "UTC")
    assert "YYYY-MM-DD HH:MM" in str(error.value) and "\n" not in str(error.value)


T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC).timestamp()
COPIES = [(T0, "a"), (T0 + 3600, "b"), (T0 + 7200, "c")]
LATER = datetime.fromtimestamp(T0 + 10**7, UTC)  # "now": after every copy of these tests


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0, "a"), (1, "a"), (3599, "a"), (3600, "b"), (5000, "b"), (7200, "c"), (10**6, "c")],
)
def test_choose_at_takes_the_newest_at_or_before(offset: int, expected: str) -> None:
    moment = datetime.fromtimestamp(T0 + offset, UTC)
    assert choose_at(COPIES, moment, UTC, LATER) == expected
    assert choose_at(list(reversed(COPIES)), moment, UTC, LATER) == expected  # order-free


def test_before_the_first_copy_names_the_oldest_and_its_time() -> None:
    with pytest.raises(SnapshotNotFound) as error:
        choose_at(COPIES, datetime.fromtimestamp(T0 - 1, UTC), BERLIN, LATER)
    message = str(error.value)
    assert "the oldest is a of 2026-12-01 11:00:00 CET" in message, message
    assert "2026-12-01 10:59:59 CET" in message
    with pytest.raises(SnapshotNotFound, match="no snapshot at all"):
        choose_at([], datetime.fromtimestamp(T0, UTC), UTC)


@given(
    times=st.lists(st.integers(0, 10**6), min_size=1, max_size=20, unique=True),
    moment=st.integers(-10, 10**6 + 10),
)
def test_choose_at_against_a_plain_scan(times: list[int], moment: int) -> None:
    copies = [(T0 + t, f"n{t}") for t in times]
    at = datetime.fromtimestamp(T0, UTC) + timedelta(seconds=moment)
    eligible = [t for t in times if t <= moment]
    if not eligible:
        with pytest.raises(SnapshotNotFound):
            choose_at(copies, at, UTC, LATER)
    else:
        assert choose_at(copies, at, UTC, LATER) == f"n{max(eligible)}"


# --- future-dated names (issue 20 item 7): a clock fault, or planted ------------------------


def test_at_never_picks_a_future_dated_copy_and_names_the_one_it_skipped() -> None:
    now = datetime.fromtimestamp(T0 + 7200, UTC)
    year_ahead = (T0 + 7200 + 365 * 86400, "ahead")  # written while the clock ran ahead
    copies = [*COPIES, year_ahead]
    far = datetime.fromtimestamp(year_ahead[0] + 1, UTC)  # an --at after even that one
    assert pick_at(copies, far, UTC, now) == ("c", "ahead")
    assert pick_at(copies, now, UTC, now) == ("c", None)  # nothing skipped: not eligible
    # Within retention's slack (5 minutes) a name is current, not future-dated.
    slight = (T0 + 7200 + 240, "slight")
    assert pick_at([*copies, slight], far, UTC, now) == ("slight", "ahead")


def test_at_with_only_future_dated_copies_says_so_in_one_line() -> None:
    now = datetime.fromtimestamp(T0, UTC) - timedelta(days=30)
    with pytest.raises(SnapshotNotFound) as error:
        choose_at(COPIES, datetime.fromtimestamp(T0 + 7200, UTC), UTC, now)
    message = str(error.value)
    assert "\n" not in message
    assert "not dated in the future" in message and "c is dated 2026-12-01 12:00:00Z" in message
