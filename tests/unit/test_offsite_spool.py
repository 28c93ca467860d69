"""Root's spool (real files): a nameless 0600 file in root's own cache directory, refused
in a directory that is a link or that others can write, and `no_space` when the recorded
size does not fit; and the `[offsite]` keys that bound a user's stream and turn."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from t3backupd.core.config import parse_config
from t3backupd.core.errors import ConfigError
from t3backupd.root.offsite.engine import OffsiteError
from t3backupd.root.offsite.spool import open_spool


def test_a_spool_is_a_nameless_private_file_in_the_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fd = open_spool(str(cache), 1 << 20)
    try:
        os.write(fd, b"bytes")
        info = os.fstat(fd)
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
        assert info.st_nlink == 0 and os.listdir(cache) == []
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
        assert os.pread(fd, 5, 0) == b"bytes"
    finally:
        os.close(fd)


def test_a_snapshot_larger_than_the_free_space_is_no_space(tmp_path: Path) -> None:
    with pytest.raises(OffsiteError) as caught:
        open_spool(str(tmp_path), 1 << 60)
    assert caught.value.reason == "no_space"
    assert f"spool in {tmp_path}: {1 << 60} bytes needed" in caught.value.message
    assert os.listdir(tmp_path) == []


def test_a_linked_or_shared_cache_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    for directory in (tmp_path / "link", shared):
        with pytest.raises(OffsiteError) as caught:
            open_spool(str(directory), 1)
        assert caught.value.reason == "failed" and str(directory) in caught.value.message
    assert os.listdir(real) == [] and os.listdir(shared) == []


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("stall_seconds", 0, "offsite.stall_seconds: must be 1-86400"),
        ("stall_seconds", "60", "offsite.stall_seconds: expected int, got str"),
        ("user_turn_seconds", -1, "offsite.user_turn_seconds: must be 0-604800"),
    ],
)
def test_the_stream_bounds_are_validated(key: str, value: object, problem: str) -> None:
    table = {"repository": "/r", "password_file": "/p", key: value}
    with pytest.raises(ConfigError) as caught:
        parse_config({"offsite": table}, "c.toml", {})
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems
