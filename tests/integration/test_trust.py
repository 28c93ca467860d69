"""Issue 10: what root trusts. Config, usermap and TLS files must be root's alone (owner,
mode, every directory and link on the way); `nobody` (above max_uid) is never served;
missing destination parents are made 0755 even under the unit's UMask=0077. Real users,
the real CLI. Needs root."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from support import need
from support.snapshots import MakeUser, json_config
from support.system import IS_ROOT, PYTHON, create_state_db, snapshot_files, t3backupd

from t3backupd.core.usermap import User


@pytest.fixture(autouse=True)
def _root() -> None:
    need(IS_ROOT, "needs root: ownership checks and real users")


def one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """A refusal: non-zero exit, no traceback, one `t3backupd:` line naming `words`."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("t3backupd:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_config_owned_by_a_user_or_writable_by_others_is_refused(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    config = json_config(sandbox, [user])
    assert t3backupd(config, "check-config").returncode == 0
    os.chown(config, user.uid, user.gid)
    one_clear_line(t3backupd(config, "check-config"), str(config), f"uid {user.uid}", "not by root")
    os.chown(config, 0, 0)
    os.chmod(config, 0o666)
    one_clear_line(t3backupd(config, "snapshot"), str(config), "writable by group or others")
    os.chmod(config, 0o644)
    # A directory on the way that a user owns: they could swap the file.
    hostile_dir = sandbox / "userdir"
    hostile_dir.mkdir()
    os.chown(hostile_dir, user.uid, user.gid)
    moved = hostile_dir / "config.toml"
    moved.write_text(config.read_text())
    one_clear_line(t3backupd(moved, "check-config"), str(hostile_dir), "directory", "not by root")


def test_a_usermap_reached_through_a_users_link_or_home_is_refused(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user)
    config = json_config(sandbox, [user])
    usermap = sandbox / "usermap"
    # A link that root owns, into the user's home: the user controls what it serves.
    planted = Path(user.home) / "usermap"
    planted.write_text(usermap.read_text())
    os.chown(planted, 0, 0)  # even a root-owned file there: the user owns the directory
    usermap.unlink()
    usermap.symlink_to(planted)
    line = one_clear_line(t3backupd(config, "snapshot"), "usermap refused", user.home)
    assert "not by root" in line
    assert not (sandbox / "dest" / user.name).exists()
    # A link the user owns (lchown), pointing at a root file: refused too.
    real = sandbox / "usermap.real"
    real.write_text(planted.read_text())
    usermap.unlink()
    usermap.symlink_to(real)
    os.lchown(usermap, user.uid, user.gid)
    one_clear_line(t3backupd(config, "snapshot"), "link", f"uid {user.uid}")
    # Root's own link to root's own file: served.
    os.lchown(usermap, 0, 0)
    result = t3backupd(config, "snapshot")
    assert result.returncode == 0, result.stderr


def test_tls_files_owned_by_a_user_are_refused(sandbox: Path, make_user: MakeUser) -> None:
    user = make_user()
    cert, key = sandbox / "cert.pem", sandbox / "key.pem"
    cert.write_text("not checked before ownership\n")
    key.write_text("not checked before ownership\n")
    os.chown(key, user.uid, user.gid)
    tls = f'[metrics]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    config = json_config(sandbox, [user], tls)
    one_clear_line(t3backupd(config, "check-config"), "metrics.tls_key", str(key), "not by root")


def test_nobody_is_never_served(sandbox: Path, make_user: MakeUser) -> None:
    user = make_user()
    create_state_db(user)
    nobody = User("nobody", 65534, 65534, "/nonexistent")
    config = json_config(sandbox, [user], usermap_text=f"sso-n=nobody\nsso-u={user.name}\n")
    result = t3backupd(config, "snapshot")
    assert result.returncode == 0, result.stderr
    assert "uid 65534 is above max_uid 60000" in result.stderr
    assert not (sandbox / "dest" / nobody.name).exists()
    assert len(snapshot_files(sandbox / "dest" / user.name)) == 1


def test_missing_destination_parents_are_made_0755_under_umask_0077(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user)
    dest = sandbox / "a" / "b" / "dest"
    config = json_config(sandbox, [user], dest=dest)
    result = subprocess.run(
        [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "snapshot"],
        capture_output=True,
        text=True,
        timeout=120,
        umask=0o077,
        env={**os.environ, "T3BACKUPD_CONFIG": ""},
    )
    assert result.returncode == 0, result.stderr
    for directory in (sandbox / "a", sandbox / "a" / "b", dest):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
    assert len(snapshot_files(dest / user.name)) == 1
