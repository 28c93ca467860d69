"""Schedules: the config's crontab line -> an APScheduler trigger, fire times, catch-up.

Everything here is pure (time is passed in), so DST, clock jumps and the catch-up
decision are unit-tested without a running scheduler.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import tzlocal
from apscheduler.triggers.cron import CronTrigger

from t3backupd.core.config import ScheduleConfig
from t3backupd.core.cron import CronFields, parse_crontab
from t3backupd.core.wallclock import occurrences

# How far back `previous_fire_time` looks, widening step by step: a schedule like
# "0 0 29 2 *" (leap days) may not have fired for eight years.
_LOOKBACKS = tuple(
    timedelta(days=days) for days in (1 / 24, 1, 8, 32, 367, 366 * 4 + 1, 366 * 8 + 2)
)


def resolve_timezone(name: str) -> tzinfo:
    """An IANA zone, or the host's local zone for "local".

    "local" resolves to the host's zone *with its DST rules* (tzlocal reads TZ and
    /etc/localtime), not to today's fixed UTC offset.
    """
    if name == "local":
        return tzlocal.get_localzone()
    return ZoneInfo(name)


def is_repeated_wall_time(moment: datetime) -> bool:
    """True if `moment` is the *second* occurrence of its wall-clock time (the hour
    that repeats when DST ends). Needs an aware datetime with a fold-aware tzinfo."""
    if moment.tzinfo is None:
        return False
    instants, _ = occurrences(moment.replace(tzinfo=None), moment.tzinfo)
    return len(instants) == 2 and moment.astimezone(UTC) == instants[1]


_DST_WINDOW = timedelta(hours=3)  # wider than any DST shift in the tz database


class CrontabTrigger(CronTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """A CronTrigger with crontab(5)'s behaviour across DST changes.

    APScheduler 3.11's own CronTrigger steps days in UTC, and so skips e.g. a midnight
    run on the day after clocks go forward, and runs a fixed-time job twice when they go
    back. This trigger matches the fields against *wall-clock* time (a UTC CronTrigger
    over naive local times has no DST to trip over) and then maps each wall time to
    real instants:

    - Clocks go back: a job with a fixed hour ("30 2 * * *") runs once, in the first
      occurrence of the repeated hour, as Debian's cron does; a job with an
      unrestricted hour ("*/20 * * * *") keeps running by elapsed time through both.
    - Clocks go forward: a fixed time in the gap (02:30) runs once that day, at the
      instant the clock reads 03:30 (02:30 at the old offset); an unrestricted hour
      simply has no runs in the hour that does not exist.

    Jitter is added after that choice, as a real-time offset.
    """

    def __init__(self, fields: CronFields, timezone: tzinfo, jitter_seconds: int = 0) -> None:
        field_args = {
            "minute": fields.minute,
            "hour": fields.hour,
            "day": fields.day,
            "month": fields.month,
            "day_of_week": fields.day_of_week,
        }
        super().__init__(**field_args, timezone=timezone)
        self._wall = CronTrigger(**field_args, timezone=UTC)
        self.crontab_fields = fields
        self.jitter_seconds = jitter_seconds
        self.fixed_hour = fields.hour != "*"

    def _instants(self, wall: datetime) -> list[datetime]:
        """Real instants (UTC) at which the naive local time `wall` runs."""
        instants, in_gap = occurrences(wall, self.timezone)
        if in_gap:
            # The wall time never shows. An unrestricted hour loses nothing (the same
            # instants come from the hour after); a fixed time runs at the old offset.
            return instants if self.fixed_hour else []
        # Repeated hour: once for fixed-hour jobs, in both occurrences otherwise.
        return instants[:1] if self.fixed_hour else instants

    def _wall_time(self, instant: datetime) -> datetime:
        return instant.astimezone(self.timezone).replace(tzinfo=None)

    def scheduled_after(self, previous: datetime | None, now: datetime) -> datetime | None:
        """The next scheduled time (no jitter), in the trigger's zone: at or after `now`
        when `previous` is None, else strictly after `previous`."""
        reference = (previous if previous is not None else now).astimezone(UTC)
        strict = previous is not None
        offsets = [
            (reference + shift).astimezone(self.timezone).utcoffset() or timedelta()
            for shift in (-_DST_WINDOW, timedelta(), _DST_WINDOW)
        ]
        # A later wall time can be an earlier instant only inside a repeated hour;
        # `margin` is how far to look back and ahead for that (0 away from DST changes).
        margin = max(offsets) - min(offsets)
        best: datetime | None = None
        start = (self._wall_time(reference) - margin).replace(tzinfo=UTC)
        candidate: datetime | None = self._wall.get_next_fire_time(None, start)
        while candidate is not None:
            wall = candidate.replace(tzinfo=None)
            if best is not None and wall > self._wall_time(best) + margin:
                break
            for instant in self._instants(wall):
                due = instant > reference or (not strict and instant == reference)
                if due and (best is None or instant < best):
                    best = instant
            candidate = self._wall.get_next_fire_time(candidate, candidate)
        return None if best is None else best.astimezone(self.timezone)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        fire = self.scheduled_after(previous_fire_time, now)
        if fire is None or not self.jitter_seconds:
            return fire
        # Not security relevant: spreads load across hosts sharing a schedule.
        delay = timedelta(seconds=random.uniform(0, self.jitter_seconds))  # noqa: S311
        return (fire.astimezone(UTC) + delay).astimezone(self.timezone)


def build_trigger(cron: str, timezone: str, jitter_seconds: int = 0) -> CronTrigger:
    """A trigger with crontab(5) meaning. Raises CronError if `cron` is invalid."""
    return CrontabTrigger(parse_crontab(cron), resolve_timezone(timezone), jitter_seconds)


def trigger_for(schedule: ScheduleConfig) -> CronTrigger:
    return build_trigger(schedule.cron, schedule.timezone, schedule.jitter_seconds)


def schedule_key(schedule: ScheduleConfig) -> tuple[str, str, int]:
    """What the trigger depends on: a reload reschedules only when this changes."""
    return (schedule.cron, schedule.timezone, schedule.jitter_seconds)


def _scheduled_after(
    trigger: CronTrigger, previous: datetime | None, now: datetime
) -> datetime | None:
    if isinstance(trigger, CrontabTrigger):
        return trigger.scheduled_after(previous, now)
    # A foreign CronTrigger: list its times without jitter so the listing is exact.
    plain = CronTrigger(
        **{field.name: str(field) for field in trigger.fields if not field.is_default},
        timezone=trigger.timezone,
    )
    fire: datetime | None = plain.get_next_fire_time(previous, now)
    return fire


def next_run_times(trigger: CronTrigger, now: datetime, count: int) -> list[datetime]:
    """The next `count` scheduled times at or after `now` (jitter not applied)."""
    times: list[datetime] = []
    previous: datetime | None = None
    current = now
    for _ in range(count):
        fire = _scheduled_after(trigger, previous, current)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        current = fire
    return times


# How far ahead longest_interval looks: five weeks show every weekly and monthly pattern
# (a year only for rarer schedules); the cap keeps a cron that fires every minute cheap
# while still showing its weekend. A DST change moves a gap by an hour, inside the slack.
_INTERVAL_HORIZONS = (timedelta(days=35), timedelta(days=400))
_INTERVAL_MAX_FIRES = 6_000


def _longest_gap(trigger: CronTrigger, now: datetime, horizon: timedelta) -> float | None:
    end = now + horizon
    longest: float | None = None
    previous: datetime | None = None
    current = now
    for _ in range(_INTERVAL_MAX_FIRES):
        fire = _scheduled_after(trigger, previous, current)
        if fire is None or fire > end:
            break
        if previous is not None:
            # Timestamps, not `fire - previous`: two datetimes of one zone subtract
            # as wall clocks, which is an hour off across a DST change.
            gap = fire.timestamp() - previous.timestamp()
            longest = gap if longest is None else max(longest, gap)
        previous = current = fire
    return longest


def longest_interval(trigger: CronTrigger, now: datetime) -> float:
    """The longest wait, in seconds, between two consecutive scheduled passes, plus the
    trigger's jitter: how old the newest snapshot may grow with every pass on time.
    A schedule that fires fewer than twice in 400 days gets 400 days.

    The staleness alerts allow this plus 2h, so an hourly schedule pages after hours,
    not after the daily 26 h.
    """
    for horizon in _INTERVAL_HORIZONS:
        longest = _longest_gap(trigger, now, horizon)
        if longest is not None:
            jitter = (
                trigger.jitter_seconds if isinstance(trigger, CrontabTrigger) else trigger.jitter
            )
            return longest + float(jitter or 0)
    return _INTERVAL_HORIZONS[-1].total_seconds()


def previous_fire_time(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The most recent scheduled time strictly before `now` (jitter not applied), or
    None if the schedule has not fired within the last eight years."""
    for lookback in _LOOKBACKS:
        fire = _scheduled_after(trigger, None, now - lookback)
        if fire is None or fire >= now:
            continue
        while True:
            following = _scheduled_after(trigger, fire, fire)
            if following is None or following >= now:
                return fire
            fire = following
    return None


def should_catch_up(
    trigger: CronTrigger, now: datetime, newest_by_user: Mapping[str, float | None]
) -> bool:
    """Whether a pass must run at start, like a systemd timer with `Persistent=true`.

    True if the last scheduled time before `now` is later than some user's newest
    snapshot (epoch seconds; None = no snapshot, or unknown). Snapshot names carry
    whole seconds, so a snapshot taken in the scheduled second counts as on time.
    """
    previous = previous_fire_time(trigger, now)
    if previous is None:
        return False
    deadline = previous.timestamp()
    return any(newest is None or newest < deadline for newest in newest_by_user.values())


def clock_jumped(previous_offset: float, current_offset: float, tolerance: float = 2.0) -> bool:
    """Whether the wall clock was stepped, given two readings of `time.time() -
    time.monotonic()`. The scheduler sleeps in monotonic time, so after a forward step
    it would wake late (and could drop a run past its misfire grace) unless woken."""
    return abs(current_offset - previous_offset) > tolerance
