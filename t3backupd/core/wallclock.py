"""Wall-clock times in a time zone -> real instants, across DST changes (pure).

The one DST-occurrence rule: the scheduler uses it for fire times, `restore --at` for
the moment an operator names.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo


def occurrences(wall: datetime, zone: tzinfo) -> tuple[list[datetime], bool]:
    """The real instants (UTC) of the naive local time `wall` in `zone`, and whether it
    falls in a DST gap: one instant normally, two in the hour that repeats when DST ends
    (first, second), none in the gap when it starts (then the instant at the old offset
    is returned, for a fixed-time job, with True)."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    first_offset, second_offset = first.utcoffset(), second.utcoffset()
    if first_offset == second_offset:
        return [first.astimezone(UTC)], False
    if first_offset is not None and second_offset is not None and first_offset > second_offset:
        return [first.astimezone(UTC), second.astimezone(UTC)], False
    return [first.astimezone(UTC)], True
