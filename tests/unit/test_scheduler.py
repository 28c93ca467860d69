"""Scheduling decisions: DST behaviour, jitter, catch-up at start, clock steps (pure), and
which passes wait for the pass lock (an idle, never started Daemon)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import t3backupd.root.passrunner as passrunner_module
from t3backupd.core.config import Config, ScheduleConfig
from t3backupd.root.daemon import Daemon
from t3backupd.root.notify import Notifier
from t3backupd.root.scheduler import (
    build_trigger,
    clock_jumped,
    is_repeated_wall_time,
    longest_interval,
    next_run_times,
    previous_fire_time,
    resolve_timezone,
    schedule_key,
    should_catch_up,
)
from t3backupd.root.served import Served

BERLIN = ZoneInfo("Europe/Berlin")


def local_dates(times: list[datetime], zone: ZoneInfo = BERLIN) -> Counter[date]:
    return Counter(time.astimezone(zone).date() for time in times)


# --- DST: a daily job runs once per local day, never skipped, never doubled -------------


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 2 * * *", "59 2 * * *", "30 3 * * *"])
@pytest.mark.parametrize("month", [3, 10])
def test_daily_job_runs_exactly_once_each_day_across_a_berlin_dst_change(
    cron: str, month: int
) -> None:
    start = datetime(2025, month, 20, 12, 0, tzinfo=BERLIN)
    times = next_run_times(build_trigger(cron, "Europe/Berlin"), start, 20)
    days = local_dates(times)
    expected = [date(2025, month, 21) + timedelta(days=offset) for offset in range(20)]
    assert sorted(days) == expected
    assert set(days.values()) == {1}


def test_fall_back_fixed_time_in_the_repeated_hour_runs_in_its_first_occurrence() -> None:
    # 2025-10-26: 03:00 CEST -> 02:00 CET; 02:30 happens at 00:30Z and again at 01:30Z.
    start = datetime(2025, 10, 25, 12, 0, tzinfo=BERLIN)
    times = next_run_times(build_trigger("30 2 * * *", "Europe/Berlin"), start, 2)
    assert [time.astimezone(UTC) for time in times] == [
        datetime(2025, 10, 26, 0, 30, tzinfo=UTC),
        datetime(2025, 10, 27, 1, 30, tzinfo=UTC),
    ]


def test_spring_forward_fixed_time_in_the_gap_still_runs_that_day() -> None:
    # 2025-03-30: 02:00 CET -> 03:00 CEST; 02:30 does not exist. It runs at 01:30Z.
    start = datetime(2025, 3, 29, 12, 0, tzinfo=BERLIN)
    times = next_run_times(build_trigger("30 2 * * *", "Europe/Berlin"), start, 2)
    assert [time.astimezone(UTC) for time in times] == [
        datetime(2025, 3, 30, 1, 30, tzinfo=UTC),
        datetime(2025, 3, 31, 0, 30, tzinfo=UTC),
    ]


def test_hourly_job_follows_elapsed_time_through_both_dst_changes() -> None:
    """An unrestricted hour is elapsed-time: 25 runs on the long day, 23 on the short."""
    trigger = build_trigger("0 * * * *", "Europe/Berlin")
    autumn = next_run_times(trigger, datetime(2025, 10, 26, 0, 0, tzinfo=BERLIN), 30)
    spring = next_run_times(trigger, datetime(2025, 3, 30, 0, 0, tzinfo=BERLIN), 30)
    assert local_dates(autumn)[date(2025, 10, 26)] == 25
    assert local_dates(spring)[date(2025, 3, 30)] == 23
    for times in (autumn, spring):
        steps = {
            later.timestamp() - earlier.timestamp() for earlier, later in itertools.pairwise(times)
        }
        assert steps == {3600.0}


@settings(max_examples=40, deadline=None)
@given(
    year=st.integers(2020, 2035),
    month=st.sampled_from([3, 10]),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
)
def test_any_daily_time_runs_once_per_local_day_around_dst(
    year: int, month: int, hour: int, minute: int
) -> None:
    start = datetime(year, month, 20, tzinfo=BERLIN)
    times = next_run_times(build_trigger(f"{minute} {hour} * * *", "Europe/Berlin"), start, 14)
    days = local_dates(times)
    assert sorted(days) == [date(year, month, 20) + timedelta(days=n) for n in range(14)]
    assert set(days.values()) == {1}


def test_repeated_wall_time_detection() -> None:
    first = datetime(2025, 10, 26, 2, 30, tzinfo=BERLIN, fold=0)
    second = datetime(2025, 10, 26, 2, 30, tzinfo=BERLIN, fold=1)
    gap = datetime(2025, 3, 30, 2, 30, tzinfo=BERLIN, fold=1)
    assert not is_repeated_wall_time(first)
    assert is_repeated_wall_time(second)
    assert not is_repeated_wall_time(gap)
    assert not is_repeated_wall_time(datetime(2025, 10, 26, 0, 30, tzinfo=UTC))


# --- jitter -------------------------------------------------------------------------------


def test_jittered_fire_times_stay_within_the_jitter_after_the_scheduled_time() -> None:
    trigger = build_trigger("30 3 * * *", "UTC", jitter_seconds=600)
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    previous = None
    for day in range(2, 12):
        fire = trigger.get_next_fire_time(previous, now)
        scheduled = datetime(2025, 6, day, 3, 30, tzinfo=UTC)
        assert scheduled <= fire <= scheduled + timedelta(seconds=600)
        previous, now = fire, fire


def test_jitter_does_not_reintroduce_the_repeated_hour() -> None:
    trigger = build_trigger("30 2 * * *", "Europe/Berlin", jitter_seconds=1200)
    now = datetime(2025, 10, 24, 12, 0, tzinfo=BERLIN)
    fires = []
    previous = None
    for _ in range(4):
        fire = trigger.get_next_fire_time(previous, now)
        fires.append(fire)
        previous, now = fire, fire
    assert set(local_dates(fires).values()) == {1}


# --- catch-up at start (Persistent=true) --------------------------------------------------

DAILY = build_trigger("30 3 * * *", "UTC")
NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
LAST_RUN = datetime(2025, 6, 10, 3, 30, tzinfo=UTC).timestamp()


def test_previous_fire_time_is_the_last_scheduled_time_before_now() -> None:
    assert previous_fire_time(DAILY, NOW) == datetime(2025, 6, 10, 3, 30, tzinfo=UTC)
    early = datetime(2025, 6, 10, 1, 0, tzinfo=UTC)
    assert previous_fire_time(DAILY, early) == datetime(2025, 6, 9, 3, 30, tzinfo=UTC)


def test_previous_fire_time_excludes_a_run_due_exactly_now() -> None:
    # The scheduler itself fires that one; catching up as well would run twice.
    exactly = datetime(2025, 6, 10, 3, 30, tzinfo=UTC)
    assert previous_fire_time(DAILY, exactly) == datetime(2025, 6, 9, 3, 30, tzinfo=UTC)


def test_previous_fire_time_finds_rare_schedules_years_back() -> None:
    leap_day = build_trigger("0 0 29 2 *", "UTC")
    assert previous_fire_time(leap_day, NOW) == datetime(2024, 2, 29, tzinfo=UTC)
    every_minute = build_trigger("* * * * *", "UTC")
    assert previous_fire_time(every_minute, NOW + timedelta(seconds=30)) == NOW


def test_catch_up_when_a_user_missed_the_last_scheduled_run() -> None:
    newest = {"alice": LAST_RUN + 60, "bob": LAST_RUN - 86400}
    assert should_catch_up(DAILY, NOW, newest)


def test_catch_up_when_a_user_has_no_snapshot_at_all() -> None:
    assert should_catch_up(DAILY, NOW, {"alice": LAST_RUN + 60, "carol": None})


def test_no_catch_up_when_everyone_is_current() -> None:
    assert not should_catch_up(DAILY, NOW, {"alice": LAST_RUN + 5, "bob": LAST_RUN + 3000})


def test_a_snapshot_named_in_the_scheduled_second_counts_as_on_time() -> None:
    assert not should_catch_up(DAILY, NOW, {"alice": LAST_RUN})


def test_no_catch_up_without_users() -> None:
    assert not should_catch_up(DAILY, NOW, {})


def test_catch_up_uses_the_local_schedule_in_its_zone() -> None:
    # 03:30 Berlin (CEST) is 01:30Z; a snapshot at 02:00Z is after it.
    berlin = build_trigger("30 3 * * *", "Europe/Berlin")
    at_0200z = datetime(2025, 6, 10, 2, 0, tzinfo=UTC).timestamp()
    assert not should_catch_up(berlin, NOW, {"alice": at_0200z})
    assert should_catch_up(build_trigger("30 3 * * *", "UTC"), NOW, {"alice": at_0200z})


def test_catch_up_on_an_hourly_schedule_after_one_missed_hour() -> None:
    hourly = build_trigger("0 * * * *", "UTC")
    now = datetime(2026, 12, 1, 14, 20, tzinfo=UTC)  # the 14:00 pass was due
    at_1300 = datetime(2026, 12, 1, 13, 0, 4, tzinfo=UTC).timestamp()
    at_1400 = datetime(2026, 12, 1, 14, 0, 3, tzinfo=UTC).timestamp()
    assert should_catch_up(hourly, now, {"alice": at_1400, "bob": at_1300})
    assert not should_catch_up(hourly, now, {"alice": at_1400, "bob": at_1400})


# --- the schedule's longest interval (the staleness alerts' threshold) ----------------


@pytest.mark.parametrize(
    ("cron", "zone", "jitter", "hours"),
    [
        ("30 3 * * *", "UTC", 0, 24),
        ("0 * * * *", "UTC", 0, 1),
        ("0 * * * *", "UTC", 600, 1 + 600 / 3600),
        ("*/15 * * * *", "UTC", 0, 0.25),
        ("0 6,18 * * *", "UTC", 0, 12),
        ("30 3 * * 1-5", "UTC", 0, 72),  # Friday 03:30 to Monday 03:30
        ("0 9-17 * * 1-5", "UTC", 0, 64),  # Friday 17:00 to Monday 09:00
        ("* 9-17 * * 1-5", "UTC", 0, 63 + 1 / 60),  # its weekend is 2,000+ fires ahead
        ("0 3 1 * *", "UTC", 0, 31 * 24),  # the longest month in five weeks ahead
        ("30 3 * * 0", "Europe/Berlin", 0, 7 * 24),
    ],
)
def test_longest_interval_is_the_longest_wait_between_two_passes(
    cron: str, zone: str, jitter: int, hours: float
) -> None:
    trigger = build_trigger(cron, zone, jitter)
    assert longest_interval(trigger, NOW) == pytest.approx(hours * 3600)


def test_longest_interval_counts_real_time_across_a_dst_change() -> None:
    # 03:30 Berlin on 2026-10-24 (CEST) to 03:30 on 10-25 (CET) is 25 real hours;
    # datetimes of one zone would subtract as wall clocks (24 h).
    before_fall_back = datetime(2026, 10, 10, tzinfo=UTC)
    daily = build_trigger("30 3 * * *", "Europe/Berlin")
    assert longest_interval(daily, before_fall_back) == 25 * 3600
    hourly = build_trigger("0 * * * *", "Europe/Berlin")
    assert longest_interval(hourly, before_fall_back) == 3600


def test_a_schedule_rarer_than_yearly_gets_the_400_day_horizon() -> None:
    leap_day = build_trigger("0 0 29 2 *", "UTC")
    assert longest_interval(leap_day, NOW) == 400 * 86400


# --- clock steps, zones, reschedule key ------------------------------------------------------


def test_a_wall_clock_step_is_detected_and_drift_is_not() -> None:
    assert clock_jumped(1_000.0, 1_000.0 + 3600)  # stepped forward an hour
    assert clock_jumped(1_000.0, 1_000.0 - 30)  # stepped back
    assert not clock_jumped(1_000.0, 1_000.3)  # NTP slew / rounding


def test_after_a_forward_clock_step_the_next_run_is_computed_from_the_new_time() -> None:
    before = next_run_times(DAILY, NOW, 1)[0]
    after_step = next_run_times(DAILY, NOW + timedelta(days=2), 1)[0]
    assert after_step - before == timedelta(days=2)


def test_local_timezone_keeps_dst_rules() -> None:
    zone = resolve_timezone("local")
    # A ZoneInfo (rules), not today's fixed offset as datetime.now().astimezone() gives.
    assert isinstance(zone, ZoneInfo)


def test_schedule_key_ignores_options_that_do_not_need_a_reschedule() -> None:
    base = ScheduleConfig()
    assert schedule_key(base) == schedule_key(ScheduleConfig(catch_up=False))
    assert schedule_key(base) == schedule_key(ScheduleConfig(misfire_grace_seconds=60))
    assert schedule_key(base) != schedule_key(ScheduleConfig(cron="0 4 * * *"))
    assert schedule_key(base) != schedule_key(ScheduleConfig(timezone="Europe/Berlin"))
    assert schedule_key(base) != schedule_key(ScheduleConfig(jitter_seconds=5))


# --- the pass lock: which passes wait for a running one, which are dropped ---------------


@pytest.fixture
def idle_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, list[str]]]:
    """A Daemon never started (no scheduler thread, no endpoint) whose passes only record
    their trigger; yields it with that record."""
    ran: list[str] = []

    def fake_pass(config: object, users: object, **kwargs: object) -> list[object]:
        ran.append("snapshot")
        return []

    def fake_verify(config: object, users: object, **kwargs: object) -> list[object]:
        ran.append("verify")
        return []

    monkeypatch.setattr(passrunner_module, "run_pass", fake_pass)
    monkeypatch.setattr(passrunner_module, "run_verify_pass", fake_verify)
    daemon = Daemon(Path("/nonexistent.toml"), Served(Config(), (), ()), Notifier(None, None))
    yield daemon, ran
    daemon._stopping.set()


def held_by(daemon: Daemon, holder: str) -> None:
    assert daemon._gate.try_enter(holder)


def release(daemon: Daemon) -> None:
    daemon._gate.leave()


@pytest.mark.parametrize("trigger", ["schedule", "catch-up"])
def test_a_scheduled_pass_waits_for_a_running_verify_pass_and_then_runs(
    idle_daemon: tuple[Daemon, list[str]], trigger: str
) -> None:
    daemon, ran = idle_daemon
    held_by(daemon, "verify")
    with capture_logs() as logs:
        waiting = threading.Thread(target=daemon._passes.run, args=[trigger])
        waiting.start()
        time.sleep(1.5)
        assert waiting.is_alive() and ran == []  # not dropped: waiting
        release(daemon)
        waiting.join(5)
    assert not waiting.is_alive()
    assert ran == ["snapshot"]
    warnings = [log for log in logs if log["log_level"] == "warning"]
    assert [log["running"] for log in warnings] == ["verify"]


def test_a_manual_pass_and_a_verify_pass_are_dropped_while_a_pass_runs(
    idle_daemon: tuple[Daemon, list[str]],
) -> None:
    daemon, ran = idle_daemon
    held_by(daemon, "schedule")
    with capture_logs() as logs:
        daemon._passes.run("manual")
        daemon._passes.verify()
    release(daemon)
    assert ran == []
    assert [log["event"] for log in logs] == [
        "pass not started: one is already running",
        "verify pass not started: a pass is running",
    ]


def test_a_waiting_pass_gives_up_when_the_daemon_stops(
    idle_daemon: tuple[Daemon, list[str]],
) -> None:
    daemon, ran = idle_daemon
    held_by(daemon, "verify")
    waiting = threading.Thread(target=daemon._passes.run, args=["schedule"])
    waiting.start()
    daemon._stopping.set()
    waiting.join(5)
    assert not waiting.is_alive()
    release(daemon)
    assert ran == []


def test_the_scheduler_has_a_thread_for_each_waiting_pass_besides_the_running_one() -> None:
    # A waiting scheduled pass and a waiting catch-up pass must not starve a verify pass.
    assert passrunner_module.SCHEDULER_THREADS >= 3
    assert {"schedule", "catch-up"} == passrunner_module.WAITING_TRIGGERS
