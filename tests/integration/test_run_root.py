"""`t3backupd run` as a user who is not root (issue 21): refused in one line, exit 2,
before the config is read or the metrics port bound. `run --unprivileged` is the explicit
way to run it as a user (the demo, the tests when not root, a single-user install): only
that user's own usermap entry is served."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from support import need
from support.daemon import START_TIMEOUT, free_port, scrape
from support.system import IS_ROOT, PYTHON, as_user, run_as

from t3backupd.core.usermap import User


def user_config(sandbox: Path, user: User, port: int) -> Path:
    """A config (and usermap) the user can read, naming the user; dest is theirs."""
    usermap = sandbox / "usermap"
    usermap.write_text(f"sso-{user.name}={user.name}\n")
    dest = sandbox / "dest"
    dest.mkdir()
    subprocess.run(["chown", f"{user.uid}:{user.gid}", str(dest)], check=True)
    config = sandbox / "config.toml"
    config.write_text(
        f'usermap = "{usermap}"\ndest = "{dest}"\nmin_uid = {user.uid}\n'
        f'[schedule]\ncron = "0 0 1 1 *"\ncatch_up = false\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n[log]\nformat = "json"\n'
    )
    return config


def test_run_as_a_user_who_is_not_root_is_refused_in_one_line_before_binding(
    sandbox: Path, make_user: Callable[[], User]
) -> None:
    need(IS_ROOT, "needs root: a real user who is not root (useradd)")
    user = make_user()
    port = free_port()
    config = user_config(sandbox, user, port)
    result = run_as(user, [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "run"],
                    check=False, timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"t3backupd: run must run as root (its workers switch to each user), not as "
        f"{user.name}; to serve only your own backups, run --unprivileged"
    ]
    assert result.stdout == ""
    with socket.socket() as probe:  # the metrics port was never bound
        probe.bind(("127.0.0.1", port))


def test_run_as_a_user_refuses_even_with_an_invalid_config(
    sandbox: Path, make_user: Callable[[], User]
) -> None:
    need(IS_ROOT, "needs root: a real user who is not root (useradd)")
    user = make_user()
    config = sandbox / "config.toml"
    config.write_text("this is = not toml [\n")
    result = run_as(user, [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "run"],
                    check=False, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "must run as root" in result.stderr and len(result.stderr.splitlines()) == 1


def test_run_unprivileged_as_a_user_serves_their_own_entry(
    sandbox: Path, make_user: Callable[[], User]
) -> None:
    need(IS_ROOT, "needs root: a real user who is not root (useradd)")
    user = make_user()
    port = free_port()
    config = user_config(sandbox, user, port)
    process = subprocess.Popen(
        [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "run", "--unprivileged"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **as_user(user),
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        text = ""
        while time.monotonic() < deadline and process.poll() is None:
            try:
                text = scrape(port)
                break
            except OSError:
                time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1]
        assert "t3backup_users 1.0" in text
        assert f'user="{user.name}"' in text
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
