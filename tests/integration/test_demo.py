"""`make demo`'s program (t3backupd_dev.demo), run for real (as root: the demo user and the
privilege drop), stopped after the first pass; then `--clean` removes what it made.

Every test uses its own demo user and sandbox, so a `make demo` on the same machine (user
`t3demo`, sandbox /var/tmp/t3backupd-demo) neither breaks these tests nor is touched by them.
"""

from __future__ import annotations

import pwd
import re
import secrets
import subprocess
import sys
from pathlib import Path

from support import need
from support.system import IS_ROOT


def demo(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-m", "t3backupd_dev.demo", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )


def unique_user() -> str:
    return f"t3dm-{secrets.token_hex(4)}"


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_demo_takes_lists_and_verifies_a_snapshot_then_cleans_up(sandbox: Path) -> None:
    need(IS_ROOT, "needs root: the demo creates its own user")
    directory = sandbox / "demo"
    user = unique_user()
    try:
        result = demo(directory, "--user", user, "--no-serve", "--size-mb", "8")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{user}: ok state-" in result.stdout
        assert "1 snapshot(s)" in result.stdout
        assert re.search(rf"(?m)^{user}: state-\S+\.sqlite\s+ok$", result.stdout), result.stdout
        snapshots = list((directory / "backups" / user).glob("state-*.sqlite"))
        assert len(snapshots) == 1
        assert snapshots[0].stat().st_uid == pwd.getpwnam(user).pw_uid
    finally:
        cleaned = demo(directory, "--user", user, "--clean")

    assert cleaned.returncode == 0, cleaned.stderr
    assert not directory.exists()
    assert not user_exists(user), "demo user still exists after --clean"


def test_a_demo_user_of_another_sandbox_is_refused_and_kept(sandbox: Path) -> None:
    """Issue 12 item 1: `make demo` then `make test` reused the demo's user from another
    sandbox. A user whose home is elsewhere is refused (one line, exit 2), not adopted, and
    the other sandbox's `--clean` does not remove it."""
    need(IS_ROOT, "needs root: the demo creates its own user")
    first, second = sandbox / "first", sandbox / "second"
    user = unique_user()
    try:
        made = demo(first, "--user", user, "--no-serve", "--size-mb", "2")
        assert made.returncode == 0, made.stdout + made.stderr
        home = pwd.getpwnam(user).pw_dir
        assert Path(home).is_relative_to(first)

        refused = demo(second, "--user", user, "--no-serve", "--size-mb", "2")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = refused.stderr.splitlines()
        assert len(lines) == 1, refused.stderr
        assert lines[0].startswith(f"t3backupd_dev.demo: user {user} exists with home {home}")
        assert "Traceback" not in refused.stderr
        assert not second.exists()

        kept = demo(second, "--user", user, "--clean")
        assert kept.returncode == 0, kept.stderr
        assert f"kept user {user}" in kept.stdout
        assert user_exists(user)
        assert pwd.getpwnam(user).pw_dir == home
        assert (first / "backups" / user).is_dir()
    finally:
        cleaned = demo(first, "--user", user, "--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not user_exists(user)
    assert not first.exists()


def test_a_bad_user_name_is_one_line_exit_2(sandbox: Path) -> None:
    result = demo(sandbox / "demo", "--user", "Bad Name", "--no-serve")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "not a valid user name: 'Bad Name'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (sandbox / "demo").exists()
