"""Schedules: the config's crontab line -> an APScheduler `CronTrigger`, next run times."""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from t3backupd.config import ScheduleConfig
from t3backupd.cron import parse_crontab


def resolve_timezone(name: str) -> tzinfo:
    """An IANA zone, or the host's local zone for "local"."""
    if name == "local":
        local = datetime.now().astimezone().tzinfo
        if local is None:  # astimezone() always sets one; keeps the type exact
            raise ValueError("no local time zone")
        return local
    return ZoneInfo(name)


def build_trigger(cron: str, timezone: str, jitter_seconds: int = 0) -> CronTrigger:
    """A CronTrigger with crontab(5) meaning. Raises CronError if `cron` is invalid."""
    fields = parse_crontab(cron)
    return CronTrigger(
        minute=fields.minute,
        hour=fields.hour,
        day=fields.day,
        month=fields.month,
        day_of_week=fields.day_of_week,
        timezone=resolve_timezone(timezone),
        jitter=jitter_seconds or None,
    )


def trigger_for(schedule: ScheduleConfig) -> CronTrigger:
    return build_trigger(schedule.cron, schedule.timezone, schedule.jitter_seconds)


def next_run_times(trigger: CronTrigger, now: datetime, count: int) -> list[datetime]:
    """The next `count` fire times strictly after `now` (jitter not applied)."""
    times: list[datetime] = []
    previous: datetime | None = None
    current = now
    # A trigger without jitter is deterministic; build one so the listing is exact.
    plain = CronTrigger(
        **{field.name: str(field) for field in trigger.fields if not field.is_default},
        timezone=trigger.timezone,
    )
    for _ in range(count):
        fire: datetime | None = plain.get_next_fire_time(previous, current)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        current = fire
    return times
