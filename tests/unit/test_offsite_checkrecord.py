"""Root's record of offsite checks: round trip, the count kept across writers, the file
of earlier versions still read, every hostile form refused with one warning; and the
metrics it feeds (with the oldest copy's time)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from t3backupd.core.usermap import User
from t3backupd.root.offsite import checkrecord
from t3backupd.root.offsite.checkrecord import CheckRecord
from t3backupd.root.offsite.engine import OffsiteSnapshot, SnapshotMeta
from t3backupd.root.offsite.metrics import OffsiteMetrics
from t3backupd.root.offsite.sync import UserOffsite
from t3backupd.root.offsite.upload import Uploaded

NOW = 1_800_000_000.0
GOOD = {"version": 1, "last_check": NOW, "last_ok": True, "last_passed": NOW,
        "last_failed": 0, "failures": 0}  # fmt: skip


def test_each_check_is_added_to_the_record_and_read_back(tmp_path: Path) -> None:
    directory = str(tmp_path / "cache")
    assert checkrecord.load(directory, NOW) is None  # no directory yet: never checked
    first = checkrecord.record(directory, True, NOW - 100)
    second = checkrecord.record(directory, False, NOW - 50)
    assert second == CheckRecord(last_passed=NOW - 100, last_failed=NOW - 50, failures=1)
    assert not second.last_ok and second.last_check == NOW - 50
    third = checkrecord.record(directory, True, NOW)
    assert third.last_ok and third.failures == 1 and first.last_passed == NOW - 100
    assert checkrecord.load(directory, NOW) == third
    path = tmp_path / "cache" / checkrecord.FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert [entry.name for entry in (tmp_path / "cache").iterdir()] == [checkrecord.FILE_NAME]
    assert json.loads(path.read_bytes()) == {
        "version": 2, "last_check": NOW, "last_ok": True, "last_passed": NOW,
        "last_failed": NOW - 50, "failures": 1, "first_copy_seen": 0,
    }  # fmt: skip


def test_the_first_copy_seen_is_recorded_once_and_a_version_1_record_still_reads(
    tmp_path: Path,
) -> None:
    # NeverChecked counts from when root first saw a copy, not from the copy's own time.
    directory = str(tmp_path / "cache")
    assert checkrecord.parse(json.dumps(GOOD).encode(), NOW).first_copy_seen == 0
    seen = checkrecord.copies_seen(directory, NOW - 10)
    assert seen.first_copy_seen == NOW - 10
    assert checkrecord.copies_seen(directory, NOW).first_copy_seen == NOW - 10
    after = checkrecord.record(directory, True, NOW)
    assert after.first_copy_seen == NOW - 10 and after.last_passed == NOW
    assert checkrecord.load(directory, NOW) == after


def test_an_untrusted_cache_dir_is_neither_followed_nor_written(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(target)
    record = checkrecord.copies_seen(str(tmp_path / "link" / "cache"), NOW)
    assert record.first_copy_seen == NOW  # in memory only
    assert list(target.iterdir()) == [] and target.stat().st_mode & 0o777 == 0o755


def test_the_one_line_file_of_earlier_versions_is_a_passed_check() -> None:
    assert checkrecord.parse(b"1799999000.125\n", NOW) == CheckRecord(last_passed=1799999000.125)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"1e999\n",
        b"-5\n",
        json.dumps({**GOOD, "extra": 1}).encode(),
        json.dumps({**GOOD, "version": 2}).encode(),
        json.dumps({**GOOD, "failures": -1}).encode(),
        json.dumps({**GOOD, "failures": True}).encode(),
        json.dumps({**GOOD, "last_passed": "now"}).encode(),
        json.dumps(
            {**GOOD, "last_passed": NOW + 10 * 86400, "last_check": NOW + 10 * 86400}
        ).encode(),
        json.dumps({**GOOD, "last_ok": False}).encode(),
        json.dumps({**GOOD, "last_check": NOW - 1}).encode(),
        b'{"version": 1, "last_passed": 1e999}',
        json.dumps([GOOD]).encode(),
    ],
)
def test_a_malformed_record_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        checkrecord.parse(data, NOW)


def plant(directory: Path, data: bytes) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / checkrecord.FILE_NAME
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def ignored(directory: Path) -> list[dict[str, object]]:
    with capture_logs() as logs:
        assert checkrecord.load(str(directory), NOW) is None
    return [log for log in logs if log["event"] == "offsite check record ignored"]


def test_a_record_through_a_link_of_another_owner_or_too_large_is_ignored_once(
    tmp_path: Path,
) -> None:
    good = json.dumps(GOOD).encode()
    real = plant(tmp_path / "real", good)
    linked = tmp_path / "linked"
    linked.mkdir(mode=0o700)
    (linked / checkrecord.FILE_NAME).symlink_to(real)
    assert len(ignored(linked)) == 1
    writable = plant(tmp_path / "writable", good)
    os.chmod(writable, 0o622)
    assert len(ignored(tmp_path / "writable")) == 1
    plant(tmp_path / "large", b" " * (checkrecord.MAX_BYTES + 1))
    assert len(ignored(tmp_path / "large")) == 1
    directory_link = tmp_path / "dirlink"
    directory_link.symlink_to(tmp_path / "real")
    assert len(ignored(directory_link)) == 1
    if os.geteuid() == 0:
        os.chown(real, 65534, 65534)
        assert len(ignored(tmp_path / "real")) == 1


def test_a_refused_record_is_replaced_by_the_next_check(tmp_path: Path) -> None:
    plant(tmp_path / "cache", b"not a record")
    with capture_logs() as logs:
        new = checkrecord.record(str(tmp_path / "cache"), True, NOW)
    assert new == CheckRecord(last_passed=NOW)
    assert [log["event"] for log in logs] == ["offsite check record ignored"]
    assert checkrecord.load(str(tmp_path / "cache"), NOW) == new


def copy(user: str, when: float) -> OffsiteSnapshot:
    name = time.strftime("state-%Y%m%dT%H%M%SZ.sqlite", time.gmtime(when))
    return OffsiteSnapshot("id", SnapshotMeta(user, name, when, 1, "0" * 64), "host")


def test_metrics_serve_the_record_and_the_oldest_copy() -> None:
    registry = CollectorRegistry()
    metrics = OffsiteMetrics(registry)
    metrics.set_users(["alice"])
    value = registry.get_sample_value
    assert value("t3backup_offsite_last_check_timestamp_seconds") == 0
    assert value("t3backup_offsite_oldest_copy_timestamp_seconds") == 0
    metrics.set_check_record(CheckRecord(last_passed=NOW - 9, last_failed=NOW, failures=3))
    assert value("t3backup_offsite_last_check_timestamp_seconds") == NOW - 9
    assert value("t3backup_offsite_last_check_failure_timestamp_seconds") == NOW
    assert value("t3backup_offsite_check_failures_total") == 3
    metrics.restore([copy("alice", NOW - 100), copy("bob", NOW - 300)])
    assert value("t3backup_offsite_oldest_copy_timestamp_seconds") == NOW - 300
    outcome = UserOffsite(User("alice", 1000, 1000, "/home/alice"))
    outcome.uploaded.append(Uploaded(copy("alice", NOW - 5).meta, "id", 10, 0.1))
    metrics.record(outcome)  # a newer upload: the oldest copy stays
    assert value("t3backup_offsite_oldest_copy_timestamp_seconds") == NOW - 300
    fresh_registry = CollectorRegistry()
    fresh = OffsiteMetrics(fresh_registry)
    fresh.set_users(["alice"])
    fresh.restore([])
    fresh.record(outcome)  # the first upload into an empty repository starts the clock
    assert (
        fresh_registry.get_sample_value("t3backup_offsite_oldest_copy_timestamp_seconds") == NOW - 5
    )
