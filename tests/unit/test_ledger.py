"""Root's ledger of published snapshots: round trip, a listing only takes away, and every
hostile form of the file or its directory ignored with one warning (never a crash)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from t3backupd.core.config import Config
from t3backupd.core.naming import format_name, parse_name
from t3backupd.core.offsite_config import DEFAULT_LEDGER_DIR, OffsiteConfig
from t3backupd.core.protocol import SnapshotInfo
from t3backupd.root import ledger

USER = "alice"
DIGEST = "ab" * 32


def config_for(directory: Path) -> Config:
    return Config(offsite=OffsiteConfig(ledger_dir=str(directory)))


def info(hour: int, label: str | None = None, digest: str | None = DIGEST) -> SnapshotInfo:
    when = datetime(2026, 12, 1, hour, tzinfo=UTC)
    return SnapshotInfo(format_name(when, label), when.timestamp(), 4096, label, sha256=digest)


def test_published_snapshots_are_recorded_and_pruned_ones_dropped(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "published"
    config = config_for(directory)
    first, second = info(1), info(2, "pre-upgrade")
    ledger.record_published(config, USER, first, [])
    ledger.record_published(config, USER, second, [])
    entries = ledger.load(str(directory), USER)
    assert sorted(entries) == sorted([first.name, second.name])
    assert entries[second.name].label == "pre-upgrade"
    assert entries[first.name].schema_version is None
    assert (entries[first.name].size, entries[first.name].sha256) == (4096, DIGEST)
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / f"{USER}.json").stat().st_mode & 0o777 == 0o600
    ledger.record_published(config, USER, info(3), [first.name])
    assert sorted(ledger.load(str(directory), USER)) == sorted([second.name, info(3).name])
    # A report without a digest (an older worker) records nothing.
    ledger.record_published(config, USER, info(4, digest=None), [])
    assert info(4).name not in ledger.load(str(directory), USER)


def test_a_listing_only_takes_entries_away(tmp_path: Path) -> None:
    config = config_for(tmp_path / "published")
    kept, gone = info(1), info(2)
    ledger.record_published(config, USER, kept, [])
    ledger.record_published(config, USER, gone, [])
    planted = info(5).name
    present = ledger.still_present(config, USER, [kept.name, planted], listed_at=4e9)
    assert list(present) == [kept.name]
    assert list(ledger.load(str(tmp_path / "published"), USER)) == [kept.name]
    # Published after the listing began: not dropped (the listing could not show it).
    ledger.record_published(config, USER, gone, [])
    assert list(ledger.still_present(config, USER, [], listed_at=0.0)) == []
    assert gone.name in ledger.load(str(tmp_path / "published"), USER)


def write(directory: Path, data: bytes) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{USER}.json"
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def good_entry(name: str | None = None) -> dict[str, object]:
    return {
        "name": name or info(1).name,
        "size": 10,
        "sha256": DIGEST,
        "published_at": 1.0,
        "label": None,
        "schema_version": None,
    }


def document(entries: list[object], user: str = USER) -> bytes:
    return json.dumps({"version": 1, "user": user, "entries": entries}).encode()


def hostile_link(tmp_path: Path) -> Path:
    directory = tmp_path / "published"
    target = write(tmp_path / "elsewhere", document([good_entry()]))
    directory.mkdir(mode=0o700)
    (directory / f"{USER}.json").symlink_to(target)
    return directory


def hostile_owner(tmp_path: Path) -> Path:
    path = write(tmp_path / "published", document([good_entry()]))
    os.chown(path, 12345, 12345)
    return path.parent


def hostile_mode(tmp_path: Path) -> Path:
    path = write(tmp_path / "published", document([good_entry()]))
    path.chmod(0o666)
    return path.parent


def hostile_garbage(tmp_path: Path) -> Path:
    return write(tmp_path / "published", b"\x00garbage{").parent


def hostile_other_user(tmp_path: Path) -> Path:
    return write(tmp_path / "published", document([good_entry()], user="mallory")).parent


def hostile_directory_link(tmp_path: Path) -> Path:
    real = write(tmp_path / "real", document([good_entry()])).parent
    (tmp_path / "published").symlink_to(real)
    return tmp_path / "published"


def hostile_open_directory(tmp_path: Path) -> Path:
    directory = write(tmp_path / "published", document([good_entry()])).parent
    directory.chmod(0o777)
    return directory


def hostile_fifo(tmp_path: Path) -> Path:
    directory = tmp_path / "published"
    directory.mkdir(mode=0o700)
    os.mkfifo(directory / f"{USER}.json", 0o600)
    return directory


def hostile_huge(tmp_path: Path) -> Path:
    return write(tmp_path / "published", b" " * (ledger.MAX_BYTES + 1)).parent


@pytest.mark.root
@pytest.mark.parametrize(
    "make",
    [
        hostile_link, hostile_owner, hostile_mode, hostile_garbage, hostile_other_user,
        hostile_directory_link, hostile_open_directory, hostile_fifo, hostile_huge,
    ],
)  # fmt: skip
def test_a_hostile_ledger_is_ignored_with_one_warning(tmp_path: Path, make: object) -> None:
    assert callable(make)
    directory = make(tmp_path)
    with capture_logs() as logs:
        assert ledger.load(str(directory), USER) == {}
    warnings = [log for log in logs if log["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert warnings[0]["event"] == "ledger ignored"
    assert str(directory) in warnings[0]["path"]


def test_one_bad_entry_costs_that_entry_only(tmp_path: Path) -> None:
    bad = [
        {**good_entry(info(2).name), "sha256": "not-a-digest"},
        {**good_entry(info(3).name), "label": "forged"},
        {**good_entry(info(4).name), "size": True},
        {**good_entry(info(5).name), "published_at": 1e15},
        {**good_entry("../etc/shadow")},
        "a string",
    ]
    directory = write(tmp_path / "published", document([good_entry(), *bad])).parent
    with capture_logs() as logs:
        entries = ledger.load(str(directory), USER)
    assert list(entries) == [info(1).name]
    dropped = [log for log in logs if log["event"] == "ledger entry dropped"]
    assert len(dropped) == 1 and dropped[0]["count"] == len(bad)


def test_a_refused_ledger_is_replaced_by_root_s_next_record(tmp_path: Path) -> None:
    directory = hostile_garbage(tmp_path)
    with capture_logs() as logs:
        ledger.record_published(config_for(directory), USER, info(1), [])
    assert [log["event"] for log in logs] == ["ledger ignored"]
    assert list(ledger.load(str(directory), USER)) == [info(1).name]


def test_without_offsite_the_ledger_is_at_its_default_path() -> None:
    # The schema guard and restore --before-schema need root's record without [offsite].
    assert ledger.ledger_dir(Config()) == DEFAULT_LEDGER_DIR
    assert ledger.load(None, USER) == {}


def test_the_previous_snapshot_is_the_newest_with_a_version_guards_aside() -> None:
    def entry(name: str, version: int | None) -> ledger.Entry:
        parsed = parse_name(name)
        assert parsed is not None
        return ledger.Entry(name, 1, "a" * 64, 1.0, parsed.label, version)

    entries = {
        e.name: e
        for e in (
            entry("state-20260101T000000Z.sqlite", 26),
            entry("state-20260102T000000Z--schema-26.sqlite", 26),
            entry("state-20260101T120000Z.sqlite", 27),
            entry("state-20260103T000000Z.sqlite", None),
        )
    }
    previous = ledger.previous_published(entries)
    assert previous is not None and previous.name == "state-20260101T120000Z.sqlite"
    assert ledger.previous_published({}) is None


def test_a_dropped_entry_is_warned_of_once_then_gone(tmp_path: Path) -> None:
    bad = {**good_entry(info(2).name), "sha256": "not-a-digest"}
    directory = write(tmp_path / "published", document([good_entry(), bad])).parent
    config = config_for(directory)
    with capture_logs() as first:
        assert list(ledger.still_present(config, USER, [info(1).name], 0.0)) == [info(1).name]
    with capture_logs() as second:
        assert list(ledger.still_present(config, USER, [info(1).name], 0.0)) == [info(1).name]
    assert [log["event"] for log in first] == ["ledger entry dropped"]
    assert second == []
