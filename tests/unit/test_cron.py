"""crontab(5) meaning (t3backupd.core.cron) and the fire times it gives (t3backupd.root.scheduler).

APScheduler 3.x counts day_of_week 0 as Monday; crontab counts 0 and 7 as Sunday. These
tests check actual fire times, so a translation that passes numbers through unchanged
fails them.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from t3backupd.core.cron import CronError, CronFields, parse_crontab
from t3backupd.root.scheduler import build_trigger, next_run_times

BERLIN = ZoneInfo("Europe/Berlin")
# 2026-11-25 is a Wednesday.
WEDNESDAY_NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def fire_times(
    cron: str, count: int, start: datetime = WEDNESDAY_NOON, tz: str = "UTC"
) -> list[datetime]:
    return next_run_times(build_trigger(cron, tz), start, count)


# --- fields ---------------------------------------------------------------------------


def test_default_schedule_translates_to_explicit_fields() -> None:
    assert parse_crontab("30 3 * * *") == CronFields("30", "3", "*", "*", "*")


@pytest.mark.parametrize("cron", ["0 3 * * 0", "0 3 * * 7", "0 3 * * sun", "0 3 * * SUN"])
def test_sunday_is_0_or_7_or_sun_as_in_crontab(cron: str) -> None:
    assert parse_crontab(cron).day_of_week == "sun"
    times = fire_times(cron, 3)
    assert [time.weekday() for time in times] == [6, 6, 6]  # Python: 6 = Sunday
    assert times[0] == datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def test_from_a_wednesday_sunday_0330_next_fires_on_the_following_sunday() -> None:
    assert fire_times("30 3 * * 0", 2) == [
        datetime(2026, 11, 29, 3, 30, tzinfo=UTC),
        datetime(2026, 12, 6, 3, 30, tzinfo=UTC),
    ]


@pytest.mark.parametrize("cron", ["0 3 * * 1-5", "0 3 * * mon-fri", "0 3 * * Mon-Fri"])
def test_weekday_range_fires_monday_to_friday_only(cron: str) -> None:
    times = fire_times(cron, 10)
    assert {time.weekday() for time in times} == {0, 1, 2, 3, 4}
    # Starting Wednesday noon: Thu, Fri, then Mon (skips the weekend).
    assert [time.day for time in times[:3]] == [26, 27, 30]


def test_saturday_to_sunday_range_via_7_covers_the_weekend() -> None:
    assert parse_crontab("0 3 * * 6-7").day_of_week == "sun,sat"
    assert {time.weekday() for time in fire_times("0 3 * * 6-7", 6)} == {5, 6}


def test_listing_every_weekday_number_means_unrestricted() -> None:
    assert parse_crontab("0 3 * * 0-6").day_of_week == "*"
    assert parse_crontab("0 3 * * 1-7").day_of_week == "*"


def test_month_names_are_understood() -> None:
    assert parse_crontab("0 3 1 jan *").month == "1"
    assert parse_crontab("0 3 1 Jan,JUL,dec *").month == "1,7,12"
    assert fire_times("0 3 1 jan *", 1) == [datetime(2027, 1, 1, 3, 0, tzinfo=UTC)]


def test_minute_step_every_15() -> None:
    assert parse_crontab("*/15 * * * *").minute == "0,15,30,45"
    times = fire_times("*/15 * * * *", 5)
    assert [time.minute for time in times] == [0, 15, 30, 45, 0]
    assert times[0] == WEDNESDAY_NOON  # a fire time equal to "now" is included


def test_step_over_a_range() -> None:
    assert parse_crontab("1-10/3 * * * *").minute == "1,4,7,10"


def test_step_from_a_single_value_runs_to_the_end_of_the_field() -> None:
    assert parse_crontab("0 5/6 * * *").hour == "5,11,17,23"


def test_lists_combine_values_ranges_and_steps() -> None:
    fields = parse_crontab("0,30 1,13-15 */10 * *")
    assert fields.minute == "0,30"
    assert fields.hour == "1,13,14,15"
    assert fields.day == "1,11,21,31"


def test_surrounding_whitespace_and_repeated_spaces_are_fine() -> None:
    assert parse_crontab("  30  3 *\t* *  ") == parse_crontab("30 3 * * *")


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_macros_mean_what_crontab_says(macro: str, equivalent: str) -> None:
    assert parse_crontab(macro) == parse_crontab(equivalent)


def test_weekly_macro_fires_on_sunday_midnight() -> None:
    assert fire_times("@weekly", 1) == [datetime(2026, 11, 29, 0, 0, tzinfo=UTC)]


def test_daily_macro_fires_every_midnight() -> None:
    times = fire_times("@daily", 3)
    assert times == [datetime(2026, 11, 26 + offset, tzinfo=UTC) for offset in range(3)]


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("cron", ["30 3 * *", "0 30 3 * * *", "", "   ", "@reboot", "@every 5m"])
def test_wrong_number_of_fields_is_refused(cron: str) -> None:
    with pytest.raises(CronError, match="expected 5 fields"):
        parse_crontab(cron)


@pytest.mark.parametrize(
    ("cron", "field"),
    [
        ("60 3 * * *", "minute"),
        ("0 24 * * *", "hour"),
        ("0 3 0 * *", "day of month"),
        ("0 3 32 * *", "day of month"),
        ("0 3 * 0 *", "month"),
        ("0 3 * 13 *", "month"),
        ("0 3 * * 8", "day of week"),
    ],
)
def test_value_out_of_range_is_refused_naming_the_field(cron: str, field: str) -> None:
    with pytest.raises(CronError, match=f"^{field}: .* is outside"):
        parse_crontab(cron)


@pytest.mark.parametrize("cron", ["0 3 * * 5-1", "0 3 * * fri-mon", "30-10 * * * *"])
def test_backwards_range_is_refused(cron: str) -> None:
    with pytest.raises(CronError, match="backwards"):
        parse_crontab(cron)


@pytest.mark.parametrize("cron", ["0 3 1 * 1", "0 3 1-7 * mon", "0 3 */2 * 0"])
def test_restricting_both_day_of_month_and_day_of_week_is_refused(cron: str) -> None:
    # crontab ORs the two fields; APScheduler would AND them: refuse rather than surprise.
    with pytest.raises(CronError, match="both day of month and day of week"):
        parse_crontab(cron)


@pytest.mark.parametrize(
    "cron",
    [
        "*/0 * * * *",
        "*/x * * * *",
        "1,,2 * * * *",
        "a * * * *",
        "-5 * * * *",
        "5- * * * *",
        "1-2-3 * * * *",
        "0 3 * * monday",
        "0 3 * january *",
        "jan 3 * * *",
        "\u00b2 3 * * *",  # isdigit() is True for superscript two, int() refuses it
        "*/\u00b2 * * * *",
        "\u0663 3 * * *",  # Arabic-Indic digit three
        "0x1 3 * * *",
        "+1 3 * * *",
    ],
)
def test_malformed_field_is_a_cron_error_not_another_exception(cron: str) -> None:
    with pytest.raises(CronError):
        parse_crontab(cron)


def test_cron_error_is_a_value_error() -> None:
    assert issubclass(CronError, ValueError)


# --- time zones and DST ---------------------------------------------------------------


def test_trigger_fires_at_wall_clock_time_in_its_timezone() -> None:
    times = fire_times("30 3 * * *", 2, tz="Europe/Berlin")
    assert [time.astimezone(BERLIN).hour for time in times] == [3, 3]
    # In November Berlin is UTC+1.
    assert times[0].astimezone(UTC) == datetime(2026, 11, 26, 2, 30, tzinfo=UTC)


def test_utc_and_berlin_triggers_for_the_same_line_differ_by_the_offset() -> None:
    utc = fire_times("0 12 * * *", 1, start=datetime(2026, 7, 1, tzinfo=UTC))
    berlin = fire_times("0 12 * * *", 1, start=datetime(2026, 7, 1, tzinfo=UTC), tz="Europe/Berlin")
    assert utc[0] - berlin[0] == timedelta(hours=2)  # CEST in July


def test_build_trigger_refuses_an_invalid_line() -> None:
    with pytest.raises(CronError):
        build_trigger("0 3 * * 8", "UTC")


def test_next_run_times_are_strictly_increasing_and_count_long() -> None:
    times = fire_times("*/15 3 * * 1-5", 20)
    assert len(times) == 20
    assert all(earlier < later for earlier, later in itertools.pairwise(times))


def test_jitter_is_not_applied_to_listed_run_times() -> None:
    trigger = build_trigger("30 3 * * *", "UTC", jitter_seconds=600)
    times = next_run_times(trigger, WEDNESDAY_NOON, 3)
    assert [(time.hour, time.minute, time.second) for time in times] == [(3, 30, 0)] * 3


def test_dst_spring_forward_nonexistent_0230_fires_once_at_0130_utc_that_day() -> None:
    """Europe/Berlin 2026-03-29: clocks jump 02:00 CET -> 03:00 CEST, so 02:30 does not
    exist. APScheduler 3.11 does not skip the day and does not hang: it fires once, at
    02:30 with the pre-transition offset (+01:00), i.e. 01:30 UTC = 03:30 CEST."""
    start = datetime(2026, 3, 27, 12, 0, tzinfo=BERLIN)
    times = fire_times("30 2 * * *", 5, start=start, tz="Europe/Berlin")
    assert len(times) == 5
    assert all(earlier < later for earlier, later in itertools.pairwise(times))
    in_utc = [time.astimezone(UTC) for time in times]
    assert in_utc == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),  # CET, 02:30 local
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # the gap day: once, 03:30 CEST
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # CEST, 02:30 local
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
        datetime(2026, 4, 1, 0, 30, tzinfo=UTC),
    ]


FALL_BACK_EVE = datetime(2026, 10, 23, 12, 0, tzinfo=BERLIN)


def test_plain_apscheduler_fires_an_ambiguous_0230_twice_at_fall_back() -> None:
    """Europe/Berlin 2026-10-25: clocks go back 03:00 CEST -> 02:00 CET, so 02:30 happens
    twice. A bare APScheduler 3.11 CronTrigger fires at both (00:30 and 01:30 UTC) and
    does not hang. This is why build_trigger returns a crontab-like trigger instead."""
    trigger = CronTrigger(minute="30", hour="2", timezone=BERLIN)
    in_utc = [time.astimezone(UTC) for time in next_run_times(trigger, FALL_BACK_EVE, 4)]
    assert in_utc == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # first 02:30 (CEST)
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),  # second 02:30 (CET)
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
    ]


def test_dst_fall_back_fixed_0230_runs_once_in_the_first_occurrence_like_cron() -> None:
    """Same night through build_trigger: like Debian's cron, a fixed-time job runs once,
    at the first 02:30 (CEST, 00:30 UTC); the repeated 02:30 (CET) is skipped. No hang,
    and the listed times keep increasing."""
    times = fire_times("30 2 * * *", 5, start=FALL_BACK_EVE, tz="Europe/Berlin")
    # Compare in UTC: Python compares datetimes sharing one tzinfo by wall clock, so two
    # 02:30s with different offsets would be "equal" as Berlin datetimes.
    in_utc = [time.astimezone(UTC) for time in times]
    assert all(earlier < later for earlier, later in itertools.pairwise(in_utc))
    assert in_utc == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),  # CEST
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # first 02:30 (CEST) only
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # CET
        datetime(2026, 10, 27, 1, 30, tzinfo=UTC),
        datetime(2026, 10, 28, 1, 30, tzinfo=UTC),
    ]
    assert all(time.astimezone(BERLIN).hour == 2 for time in times)


def test_dst_fall_back_unrestricted_hour_keeps_running_through_the_repeated_hour() -> None:
    """A schedule by elapsed time ("*/20 * * * *") runs in both occurrences of 02:xx:
    from 01:50 CEST, every 20 minutes of real time (00:00-00:40 UTC and 01:00-01:40 UTC)."""
    start = datetime(2026, 10, 25, 1, 50, tzinfo=BERLIN)
    in_utc = [
        time.astimezone(UTC) for time in fire_times("*/20 * * * *", 8, start, "Europe/Berlin")
    ]
    assert in_utc == [
        datetime(2026, 10, 25, 0, 0, tzinfo=UTC) + timedelta(minutes=20 * step) for step in range(8)
    ]


def test_dst_fall_back_every_20_minutes_through_the_repeated_hour_keeps_increasing() -> None:
    start = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)
    times = fire_times("*/20 1-3 * * *", 12, start=start, tz="Europe/Berlin")
    assert len(times) == 12
    in_utc = [time.astimezone(UTC) for time in times]
    assert all(earlier < later for earlier, later in itertools.pairwise(in_utc))
