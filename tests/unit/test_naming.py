"""Snapshot file names (t3backupd.core.naming): format, parse, legacy names, temp names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from t3backupd.core.naming import (
    SnapshotName,
    format_name,
    is_temp_name,
    is_valid_label,
    parse_name,
)

BERLIN = ZoneInfo("Europe/Berlin")
WHEN = datetime(2026, 11, 25, 10, 10, 10, tzinfo=UTC)

labels = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True).filter(
    lambda label: label != "." and ".." not in label
)
aware_times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")]),
)


# --- format ---------------------------------------------------------------------------


def test_format_unlabelled_name() -> None:
    assert format_name(WHEN) == "state-20261125T101010Z.sqlite"


def test_format_labelled_name() -> None:
    assert format_name(WHEN, "pre-upgrade_1.2") == "state-20261125T101010Z--pre-upgrade_1.2.sqlite"


def test_format_converts_aware_times_to_utc() -> None:
    berlin = datetime(2026, 11, 25, 11, 10, 10, tzinfo=BERLIN)  # CET, UTC+1
    assert format_name(berlin) == "state-20261125T101010Z.sqlite"
    tokyo = datetime(2026, 11, 26, 1, 0, 0, tzinfo=timezone(timedelta(hours=9)))
    assert format_name(tokyo) == "state-20261125T160000Z.sqlite"


def test_format_drops_microseconds() -> None:
    assert format_name(WHEN.replace(microsecond=999_999)) == format_name(WHEN)


def test_format_refuses_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_name(datetime(2026, 11, 25, 10, 10, 10))


@pytest.mark.parametrize(
    "label",
    ["", "a/b", "..", ".", "a..b", "x" * 65, "pre upgrade", "tab\t", "ünïcode", "a\nb", "a:b"],
)
def test_format_refuses_invalid_labels(label: str) -> None:
    assert not is_valid_label(label)
    with pytest.raises(ValueError, match="invalid label"):
        format_name(WHEN, label)


@pytest.mark.parametrize("label", ["x" * 64, "pre-restore", "v1.2.3", "A_b-C.9", "a.b.c"])
def test_valid_labels_are_accepted(label: str) -> None:
    assert is_valid_label(label)
    parsed = parse_name(format_name(WHEN, label))
    assert parsed is not None
    assert parsed.label == label


# --- round trip -----------------------------------------------------------------------


@given(when=aware_times)
def test_round_trip_without_label(when: datetime) -> None:
    name = format_name(when)
    parsed = parse_name(name)
    assert parsed == SnapshotName(name, when.astimezone(UTC).replace(microsecond=0), None)
    assert parsed.time.tzinfo is not None
    assert parsed.checksum_filename == name + ".sha256"


@given(when=aware_times, label=labels)
def test_round_trip_with_label(when: datetime, label: str) -> None:
    name = format_name(when, label)
    parsed = parse_name(name)
    assert parsed is not None
    assert parsed.label == label
    assert parsed.time == when.astimezone(UTC).replace(microsecond=0)
    assert not parsed.legacy


# --- legacy names ---------------------------------------------------------------------


def test_legacy_name_is_read_in_the_given_local_zone() -> None:
    parsed = parse_name("state-20261125-031500.sqlite", local_tz=BERLIN)
    assert parsed is not None
    assert parsed.legacy
    assert parsed.label is None
    assert parsed.time == datetime(2026, 11, 25, 2, 15, tzinfo=UTC)  # CET = UTC+1
    assert parsed.time.utcoffset() == timedelta(0)


def test_legacy_name_in_summer_uses_the_summer_offset() -> None:
    parsed = parse_name("state-20260701-031500.sqlite", local_tz=BERLIN)
    assert parsed is not None
    assert parsed.time == datetime(2026, 7, 1, 1, 15, tzinfo=UTC)  # CEST = UTC+2


def test_legacy_name_in_utc_zone_matches_its_digits() -> None:
    parsed = parse_name("state-20261125-031500.sqlite", local_tz=UTC)
    assert parsed is not None
    assert parsed.time == datetime(2026, 11, 25, 3, 15, tzinfo=UTC)


def test_legacy_name_without_zone_uses_the_host_zone_and_is_aware() -> None:
    parsed = parse_name("state-20261125-031500.sqlite")
    assert parsed is not None
    assert parsed.time.utcoffset() == timedelta(0)
    assert parsed.time == datetime(2026, 11, 25, 3, 15).astimezone()


# --- not snapshot names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    [
        "state.sqlite",
        "state-2026.sqlite",
        "state-20261301T000000Z.sqlite",  # month 13
        "state-20260230T000000Z.sqlite",  # 30 February
        "state-20261125T250000Z.sqlite",  # hour 25
        "state-20261125-246000.sqlite",  # legacy, invalid time
        "state-20261325-010000.sqlite",  # legacy, invalid month
        "foo.sqlite",
        "state-20261125T101010Z.sqlite.sha256",
        "state-20261125T101010Z.sqlite-wal",
        "state-20261125T101010.sqlite",  # no Z
        "state-20261125T101010Z--.sqlite",  # empty label
        "state-20261125T101010Z--a/b.sqlite",
        "state-20261125T101010Z--a b.sqlite",
        f"state-20261125T101010Z--{'x' * 65}.sqlite",
        "../state-20261125T101010Z.sqlite",
        "x/state-20261125T101010Z.sqlite",
        "state-20261125T101010Z.sqlite\n",
        " state-20261125T101010Z.sqlite",
        "state-\uff12\uff10\uff12\uff16\uff11\uff11\uff12\uff15T101010Z.sqlite",  # fullwidth
        "state-\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0665-101010.sqlite",  # Arabic-Indic
        ".t3backupd-state-20261125T101010Z.sqlite.tmp",
        ".t3backupd-abc123.tmp",
        "",
    ],
)
def test_non_snapshot_names_parse_to_none(filename: str) -> None:
    assert parse_name(filename, local_tz=UTC) is None


# --- temp names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    [
        ".t3backupd-abc123.tmp",
        ".t3backupd-.tmp",
        ".t3backupd-abc.tmp-journal",
        ".t3backupd-abc.tmp-wal",
    ],
)
def test_worker_temp_names_are_recognised(filename: str) -> None:
    assert is_temp_name(filename)


@pytest.mark.parametrize(
    "filename",
    [
        "state-20261125T101010Z.sqlite",
        "t3backupd-abc.tmp",
        ".t3backupd-abc.tmp.sha256",
        ".t3backupd-abc",
        ".lock",
        "other.tmp",
    ],
)
def test_other_names_are_not_temp_names(filename: str) -> None:
    assert not is_temp_name(filename)
