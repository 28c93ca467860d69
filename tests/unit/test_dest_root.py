"""spawn.ensure_dest_root on real directories in tmp_path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from t3backupd.root.spawn import DirectoryRefused, ensure_dest_root


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_dest_is_exactly_0755_even_under_umask_077(tmp_path: Path) -> None:
    previous = os.umask(0o077)  # what the systemd unit sets
    try:
        ensure_dest_root(str(tmp_path / "dest"))
    finally:
        os.umask(previous)
    assert mode(tmp_path / "dest") == 0o755


def test_a_symlinked_dest_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "dest").symlink_to(target)
    with pytest.raises(DirectoryRefused, match="symlink"):
        ensure_dest_root(str(tmp_path / "dest"))
    assert mode(target) == 0o700


def test_a_group_writable_dest_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    dest.chmod(0o775)
    with pytest.raises(DirectoryRefused, match="writable"):
        ensure_dest_root(str(dest))


def test_a_dest_left_0700_by_an_interrupted_creation_is_finished(tmp_path: Path) -> None:
    # ensure_dest_root makes <dest> 0700, checks it, then chmods it 0755: a run that ended
    # in between (a CLI exiting on Ctrl-C) left it 0700, and every worker locked out.
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    ensure_dest_root(str(dest))
    assert mode(dest) == 0o755
