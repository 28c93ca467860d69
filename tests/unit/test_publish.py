"""snapshot.publish on real files in tmp_path: names never collide, and a new snapshot
always sorts as the newest (unless an existing name is far in the future)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from t3backupd.core.naming import format_name
from t3backupd.worker.files import create_temp, publish

WHEN = datetime(2026, 11, 25, 10, 0, 0, 500000, tzinfo=UTC)


def plant(directory: Path, when: datetime, label: str | None = None) -> str:
    name = format_name(when, label)
    (directory / name).write_bytes(b"older snapshot")
    return name


def publish_one(directory: Path) -> str:
    temp = create_temp(str(directory))
    Path(temp).write_bytes(b"new snapshot")
    return publish(str(directory), temp, WHEN, None, "ab" * 32)


def test_name_is_the_start_time_when_nothing_is_newer(tmp_path: Path) -> None:
    plant(tmp_path, WHEN - timedelta(days=1))
    name = publish_one(tmp_path)
    assert name == format_name(WHEN)
    assert (tmp_path / f"{name}.sha256").read_text() == f"{'ab' * 32}  {name}\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_existing_name_is_never_replaced(tmp_path: Path) -> None:
    taken = plant(tmp_path, WHEN)
    name = publish_one(tmp_path)
    assert name == format_name(WHEN + timedelta(seconds=1))
    assert (tmp_path / taken).read_bytes() == b"older snapshot"


def test_a_nearby_newer_name_pushes_the_new_one_past_it(tmp_path: Path) -> None:
    # Passes faster than one a second: a name freed by pruning (WHEN) must not be reused
    # for content newer than the snapshot named WHEN + 2 s.
    plant(tmp_path, WHEN + timedelta(seconds=2), "pre-upgrade")
    name = publish_one(tmp_path)
    assert name == format_name(WHEN + timedelta(seconds=3))


def test_a_far_future_name_from_a_wrong_clock_is_ignored(tmp_path: Path) -> None:
    plant(tmp_path, WHEN + timedelta(days=365))
    assert publish_one(tmp_path) == format_name(WHEN)
