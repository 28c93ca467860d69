"""crontab(5) expressions -> APScheduler 3.x `CronTrigger` fields (pure).

APScheduler's `day_of_week` counts 0 as Monday while crontab counts 0 and 7 as
Sunday, and `CronTrigger.from_crontab` passes the field through unchanged. We
therefore parse every field ourselves (numbers, names, ranges, steps, lists, `*`)
and hand APScheduler explicit, unambiguous values.
"""

from __future__ import annotations

from dataclasses import dataclass


class CronError(ValueError):
    """The expression is not a valid 5-field crontab line."""


MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun",
                "jul", "aug", "sep", "oct", "nov", "dec"]  # fmt: skip
_CRONTAB_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# APScheduler's own names, indexed by crontab day number (0 = Sunday).
_APSCHEDULER_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


@dataclass(frozen=True)
class CronFields:
    """Keyword arguments for `apscheduler.triggers.cron.CronTrigger`."""

    minute: str
    hour: str
    day: str
    month: str
    day_of_week: str


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_offset: int = 0


_MINUTE = _FieldSpec("minute", 0, 59)
_HOUR = _FieldSpec("hour", 0, 23)
_DAY = _FieldSpec("day of month", 1, 31)
_MONTH = _FieldSpec("month", 1, 12, tuple(_MONTH_NAMES), 1)
_WEEKDAY = _FieldSpec("day of week", 0, 7, tuple(_CRONTAB_DAY_NAMES), 0)


def _value(text: str, spec: _FieldSpec) -> int:
    lowered = text.lower()
    if lowered in spec.names:
        return spec.names.index(lowered) + spec.name_offset
    # isascii: str.isdigit() accepts "²" and other digits int() rejects or reads oddly.
    if not (text.isascii() and text.isdigit()):
        raise CronError(f"{spec.name}: {text!r} is not a number or name")
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise CronError(f"{spec.name}: {number} is outside {spec.low}-{spec.high}")
    return number


def expand_field(text: str, spec: _FieldSpec) -> set[int] | None:
    """The set of values a field matches; None for a bare `*` (unrestricted)."""
    if text == "*":
        return None
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{spec.name}: empty list element in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) < 1:
                raise CronError(f"{spec.name}: bad step {step_text!r}")
            step = int(step_text)
        if base == "*":
            first, last = spec.low, spec.high
        elif "-" in base:
            start_text, _, end_text = base.partition("-")
            first, last = _value(start_text, spec), _value(end_text, spec)
            if first > last:
                raise CronError(f"{spec.name}: range {base!r} runs backwards")
        else:
            first = _value(base, spec)
            last = spec.high if slash else first
        values.update(range(first, last + 1, step))
    return values


def _join(values: set[int] | None) -> str:
    return "*" if values is None else ",".join(str(value) for value in sorted(values))


def parse_crontab(expression: str) -> CronFields:
    """Translate a crontab(5) schedule into APScheduler CronTrigger fields.

    Raises CronError if the expression is malformed, or restricts both day-of-month
    and day-of-week (crontab ORs those two; APScheduler would AND them).
    """
    text = MACROS.get(expression.strip().lower(), expression)
    fields = text.split()
    if len(fields) != 5:
        raise CronError(f"{expression!r}: expected 5 fields (min hour dom month dow)")
    minute = expand_field(fields[0], _MINUTE)
    hour = expand_field(fields[1], _HOUR)
    day = expand_field(fields[2], _DAY)
    month = expand_field(fields[3], _MONTH)
    weekdays = expand_field(fields[4], _WEEKDAY)
    if day is not None and weekdays is not None:
        raise CronError(
            f"{expression!r}: restricting both day of month and day of week is not supported"
        )
    if weekdays is not None:
        normalised = {0 if value == 7 else value for value in weekdays}
        if len(normalised) == 7:
            weekdays = None
        day_of_week = ",".join(_APSCHEDULER_DAYS[value] for value in sorted(normalised))
    return CronFields(
        minute=_join(minute),
        hour=_join(hour),
        day=_join(day),
        month=_join(month),
        day_of_week="*" if weekdays is None else day_of_week,
    )
