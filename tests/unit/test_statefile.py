"""The state file (last known inventory): round trip, and every hostile form refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import need

from t3backupd.root import statefile

DEST = "/var/backups/t3-state"
NOW = 1_800_000_000.0


def document(users: object, dest: str = DEST, version: object = 1) -> bytes:
    return json.dumps({"version": version, "dest": dest, "users": users}).encode()


def test_round_trip_keeps_only_served_users(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    summaries = {"alice": (14, 1_700_000_000.0, 4096), "bob": (0, 0.0, 0)}
    statefile.save(str(tmp_path), DEST, summaries)
    path = tmp_path / statefile.FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert statefile.load(str(tmp_path), DEST, ["alice", "carol"]) == {
        "alice": (14, 1_700_000_000.0, 4096)
    }
    # Written for another dest: nothing applies.
    assert statefile.load(str(tmp_path), "/elsewhere", ["alice"]) == {}
    assert [entry.name for entry in tmp_path.iterdir()] == [statefile.FILE_NAME]


def test_no_state_directory_means_no_state_file() -> None:
    assert statefile.state_directory({}) is None
    assert statefile.state_directory({"STATE_DIRECTORY": "relative"}) is None
    assert statefile.state_directory({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == "/var/lib/a"
    assert statefile.load(None, DEST, ["alice"]) == {}
    statefile.save(None, DEST, {"alice": (1, 1.0, 1)})  # a no-op, never raises


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "expected keys"),
        (document({}, version=2), "version"),
        (document([]), "users: expected an object"),
    ],
)  # fmt: skip
def test_hostile_content_is_refused_with_why(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[")):
        statefile.parse(data, DEST, NOW)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ([1, 2], "expected [snapshots, newest, bytes]"),
        ({"count": 1}, "expected [snapshots, newest, bytes]"),
        ([-1, 1.0, 1], "snapshots -1"),
        ([True, 1.0, 1], "snapshots True"),
        ([1, "1", 1], "newest '1'"),
        ([1, NOW + 3 * 86400, 1], "in the future"),
        ([1, -5.0, 1], "newest -5.0"),
        ([1, 1.0, 1.5], "bytes 1.5"),
        ([1, 1.0, 1 << 60], "bytes"),
    ],
)  # fmt: skip
def test_a_bad_entry_drops_that_user_only_with_why(entry: object, why: str) -> None:
    data = document({"alice": [1, 1.0, 1], "mallory": entry, "bob": [2, 2.0, 2]})
    found, dropped = statefile.parse(data, DEST, NOW)
    assert found == {"alice": (1, 1.0, 1), "bob": (2, 2.0, 2)}
    assert list(dropped) == ["mallory"] and why in dropped["mallory"]


def test_a_nan_entry_drops_that_user_only() -> None:
    data = (b'{"version": 1, "dest": "/var/backups/t3-state", '
            b'"users": {"a": [1, NaN, 1], "b": [1, 1.0, 1]}}')  # fmt: skip
    found, dropped = statefile.parse(data, DEST, NOW)
    assert found == {"b": (1, 1.0, 1)} and list(dropped) == ["a"]


def test_load_logs_each_dropped_entry_once_naming_the_user(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    write_raw(tmp_path, document({"alice": [1, 1.0, 1], "mallory": [1, 4.1e9, 1]}))
    with capture_logs() as logs:
        found = statefile.load(str(tmp_path), DEST, ["alice", "mallory"])
    assert found == {"alice": (1, 1.0, 1)}
    dropped = [event for event in logs if event["event"] == "state file entry dropped"]
    assert len(dropped) == 1
    assert dropped[0]["user"] == "mallory" and "in the future" in dropped[0]["error"]
    assert not [event for event in logs if event["event"] == "state file ignored"]


def test_save_never_writes_what_load_would_refuse(tmp_path: Path) -> None:
    # Before: a value far in the future was written, and the next start refused the
    # whole file ("value out of range"): every user's last success was lost.
    os.chmod(tmp_path, 0o755)
    summaries = {"alice": (3, 1_700_000_000.0, 10), "mallory": (2, 4_070_908_800.0, 10)}
    with capture_logs() as logs:
        statefile.save(str(tmp_path), DEST, summaries)
    assert [event["user"] for event in logs if event["event"] == "state file entry not saved"] \
        == ["mallory"]  # fmt: skip
    saved = json.loads((tmp_path / statefile.FILE_NAME).read_bytes())
    assert set(saved["users"]) == {"alice"}
    assert statefile.load(str(tmp_path), DEST, ["alice", "mallory"]) == {
        "alice": (3, 1_700_000_000.0, 10)
    }


def write_raw(directory: Path, data: bytes, mode: int = 0o600) -> Path:
    path = directory / statefile.FILE_NAME
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_group_writable_file_is_ignored(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    write_raw(tmp_path, document({"alice": [1, 1.0, 1]}), 0o620)
    assert statefile.load(str(tmp_path), DEST, ["alice"]) == {}


def test_group_writable_directory_is_ignored(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o775)
    write_raw(tmp_path, document({"alice": [1, 1.0, 1]}))
    assert statefile.load(str(tmp_path), DEST, ["alice"]) == {}


def test_symlinked_file_and_directory_are_ignored(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    write_raw(real, document({"alice": [1, 1.0, 1]}))
    (tmp_path / "link").symlink_to(real)
    assert statefile.load(str(tmp_path / "link"), DEST, ["alice"]) == {}
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    (other / statefile.FILE_NAME).symlink_to(real / statefile.FILE_NAME)
    assert statefile.load(str(other), DEST, ["alice"]) == {}
    assert statefile.load(str(real), DEST, ["alice"]) == {"alice": (1, 1.0, 1)}


def test_a_fifo_never_blocks_the_load(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    os.mkfifo(tmp_path / statefile.FILE_NAME, 0o600)
    assert statefile.load(str(tmp_path), DEST, ["alice"]) == {}


def test_a_file_owned_by_another_uid_is_ignored(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "needs root to chown the file to another uid")
    os.chmod(tmp_path, 0o755)
    path = write_raw(tmp_path, document({"alice": [1, 1.0, 1]}))
    os.chown(path, 65534, 65534)
    assert statefile.load(str(tmp_path), DEST, ["alice"]) == {}


def test_an_oversized_file_is_ignored(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = write_raw(tmp_path, b"")
    with path.open("r+b") as file:
        file.truncate(statefile.MAX_BYTES + 1)
    assert statefile.load(str(tmp_path), DEST, ["alice"]) == {}
