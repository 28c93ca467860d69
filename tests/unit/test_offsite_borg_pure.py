"""The borg engine's pure parts: `[offsite] engine = "borg"` validation, the SQLite
page-size header, borg's error classification and its archive listing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from t3backupd.core.config import parse_config
from t3backupd.core.errors import ConfigError
from t3backupd.root.offsite.borg import _parse_archive, archive_name, classify
from t3backupd.root.offsite.engine import SnapshotMeta, sqlite_page_size

NO_ENV: dict[str, str] = {}
DIGEST = "ab" * 32


def problems(offsite: dict[str, object]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"offsite": offsite}, "/etc/t3backupd/config.toml", NO_ENV)
    return caught.value.problems


def test_borg_section_defaults() -> None:
    config = parse_config(
        {"offsite": {"engine": "borg", "repository": "ssh://b@h:2222/./r", "password_file": "/p"}},
        "c",
        NO_ENV,
    ).offsite
    assert config is not None
    assert (config.engine, config.borg, config.encryption) == ("borg", "borg", "repokey-blake2")
    assert config.cache_dir == "/var/cache/t3backupd/borg"


def test_borg_problems_all_at_once() -> None:
    found = problems(
        {
            "engine": "borg",
            "repository": "s3:https://h/b",
            "password_file": "/p",
            "encryption": "none",
            "compression": "max",
            "check_read_data_subset": "500M",
            "options": ["sftp.command=ssh x"],
        }
    )
    keys = sorted({problem.split(":")[0] for problem in found})
    assert keys == sorted(
        "offsite." + key
        for key in (
            "repository",
            "encryption",
            "compression",
            "check_read_data_subset",
            "options",
        )
    )
    assert "offsite.compression: means nothing for engine 'borg'; remove it" in found


def test_restic_refuses_borg_only_keys() -> None:
    found = problems(
        {"repository": "/r", "password_file": "/p", "borg": "borg", "encryption": "repokey"}
    )
    assert sorted(found) == [
        "offsite.borg: means nothing for engine 'restic'; remove it",
        "offsite.encryption: means nothing for engine 'restic'; remove it",
    ]


@pytest.mark.parametrize("page_size", [512, 4096, 8192, 65536])
def test_page_size_from_a_real_sqlite_header(tmp_path: Path, page_size: int) -> None:
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA page_size={page_size}")
    db.execute("CREATE TABLE t(x)")
    db.commit()
    db.close()
    assert sqlite_page_size(path.read_bytes()[:100]) == page_size


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"SQLite format 3\x00" + b"\x10\x00",  # too short
        b"not a database!!" + b"\x10\x00" + bytes(82),
        b"SQLite format 3\x00" + b"\x0c\x00" + bytes(82),  # 3072: not a power of two
        b"SQLite format 3\x00" + b"\x01\x00" + bytes(82),  # 256: too small
    ],
)
def test_not_a_sqlite_header(head: bytes) -> None:
    assert sqlite_page_size(head) is None


def _log(msgid: str, message: str) -> bytes:
    line = {"type": "log_message", "levelname": "ERROR", "message": message, "msgid": msgid}
    return (json.dumps(line) + "\n").encode()


READ_ONLY_LOCK = _log(
    "LockFailed",
    "Failed to create/acquire the lock /r/lock.exclusive ([Errno 30] Read-only file system: "
    "'/r/lock.exclusive.wln0h09_.tmp').",
) + _log(
    "",
    "Traceback (most recent call last):\n  ...\n"
    "OSError: [Errno 30] Read-only file system: '/r/lock.exclusive.wln0h09_.tmp'",
)


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (_log("PassphraseWrong", "passphrase supplied ... is incorrect."), "auth"),
        (_log("Repository.DoesNotExist", "Repository /r does not exist."), "no_repository"),
        (_log("LockTimeout", "Failed to create/acquire the lock /r/lock.exclusive"), "locked"),
        (
            b"ssh: connect to host 127.0.0.1 port 9: Connection refused\n"
            + _log("ConnectionClosed", "Connection closed by remote host"),
            "unreachable",
        ),
        (b"Permission denied (publickey).\n", "auth"),
        (b"Host key verification failed.\n", "auth"),
        (_log("", "[Errno 28] No space left on device"), "no_space"),
        (_log("Something", "odd"), "failed"),
        (READ_ONLY_LOCK, "read_only"),
    ],
)
def test_classify(stderr: bytes, reason: str) -> None:
    assert classify(stderr)[0] == reason


def test_a_lock_on_a_read_only_file_system_is_read_only_not_locked() -> None:
    # What borg 1.2 says when it cannot write its lock: LockFailed, then the traceback.
    assert classify(READ_ONLY_LOCK) == (
        "read_only",
        "Failed to create/acquire the lock /r/lock.exclusive ([Errno 30] Read-only file "
        "system: '/r/lock.exclusive.wln0h09_.tmp').",
    )


def test_archives_parse_back_and_foreign_ones_are_ignored() -> None:
    meta = SnapshotMeta("alice", "state-20261201T033000Z.sqlite", 0, 10, DIGEST, None, 4096)
    name = archive_name("h1", meta)
    comment = f"t3backupd sha256={DIGEST} size=10 page_size=4096"
    parsed = _parse_archive({"name": name, "comment": comment}, "h1")
    assert parsed is not None and parsed.id == name
    assert (parsed.meta.user, parsed.meta.name, parsed.meta.size, parsed.meta.page_size) == (
        "alice",
        meta.name,
        10,
        4096,
    )
    assert _parse_archive({"name": name, "comment": comment}, "h2") is None  # another host
    assert _parse_archive({"name": name, "comment": "hand-made"}, "h1") is None
    assert _parse_archive({"name": name, "comment": comment.replace(DIGEST, "x")}, "h1") is None
    assert _parse_archive({"name": "t3backupd+h1+alice+junk", "comment": comment}, "h1") is None
