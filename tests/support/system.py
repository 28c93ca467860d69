"""Real OS users, real WAL databases, live writers, the real CLI: shared by test suites.

Everything a worker touches must be reachable by the unprivileged users, so sandboxes
live under /var/tmp (world-traversable), never under pytest's 0700 tmp_path.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support import need
from t3backupd.core.offsite_config import DEFAULT_LEDGER_DIR
from t3backupd.core.usermap import User

IS_ROOT = os.geteuid() == 0
PYTHON = sys.executable


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


@contextmanager
def make_sandbox() -> Iterator[Path]:
    """A fresh root-owned 0755 directory under /var/tmp, removed afterwards."""
    path = Path("/var/tmp") / f"t3bt-{secrets.token_hex(4)}"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def user_factory() -> Iterator[Callable[[], User]]:
    """Factory of real OS users (useradd -m), removed with their homes afterwards."""
    need(IS_ROOT, "needs root to create real users with useradd")
    need(shutil.which("useradd") is not None, "needs useradd (Debian package passwd)")
    created: list[str] = []

    def factory() -> User:
        name = f"t3t{secrets.token_hex(4)}"
        _run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
        created.append(name)
        record = pwd.getpwnam(name)
        return User(name, record.pw_uid, record.pw_gid, record.pw_dir)

    try:
        yield factory
    finally:
        for name in created:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)
            # Root's record of what it published for them (the default ledger_dir, used
            # by every config without [offsite]): nothing of a removed user stays behind.
            for suffix in (".json", ".hold"):
                with suppress(FileNotFoundError):
                    os.unlink(os.path.join(DEFAULT_LEDGER_DIR, name + suffix))


def current_user() -> User:
    """The invoking user (non-root mode)."""
    record = pwd.getpwuid(os.geteuid())
    return User(record.pw_name, record.pw_uid, record.pw_gid, record.pw_dir)


def as_user(user: User) -> dict[str, Any]:
    """subprocess keywords for a child run as `user` (as the invoking user when not root),
    from `/`, with a minimal environment."""
    return {
        "user": user.uid if IS_ROOT else None,
        "group": user.gid if IS_ROOT else None,
        "extra_groups": [] if IS_ROOT else None,
        "cwd": "/",
        "env": {"HOME": user.home, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    }


def run_as(user: User, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command as `user` (plain run when not root), capturing text output."""
    return subprocess.run(
        command,
        **as_user(user),
        capture_output=True,
        text=True,
        check=kwargs.pop("check", True),
        **kwargs,
    )


def state_path(user: User) -> Path:
    return Path(user.home) / ".t3" / "userdata" / "state.sqlite"


def create_state_db(user: User, size_mb: float = 2, seed: int = 0) -> Path:
    """A realistic T3 WAL database at the user's default path, owned by the user."""
    path = state_path(user)
    run_as(user, ["mkdir", "-p", str(path.parent)])
    run_as(
        user,
        [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "create", str(path),
         "--size-mb", str(size_mb), "--seed", str(seed)],
    )  # fmt: skip
    return path


@dataclass
class LiveWriter:
    process: subprocess.Popen[str]
    stats_path: Path
    stats: dict[str, Any] = field(default_factory=dict)


@contextmanager
def live_writer(user: User, db: Path, rate: float | None = 200.0) -> Iterator[LiveWriter]:
    """The simulated app writing `db` as `user` until the block ends; stats afterwards."""
    scratch = Path(user.home) / f".writer-{secrets.token_hex(3)}"
    run_as(user, ["mkdir", "-p", str(scratch)])
    stats_path, ready = scratch / "stats.json", scratch / "ready"
    command = [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "write", str(db),
               "--stats", str(stats_path), "--ready-file", str(ready)]  # fmt: skip
    if rate is not None:
        command += ["--rate", str(rate)]
    process = spawn_as(user, command)
    writer = LiveWriter(process, stats_path)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("live writer did not start")
            time.sleep(0.05)
        yield writer
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if stats_path.exists():
            writer.stats = json.loads(stats_path.read_text())
        shutil.rmtree(scratch, ignore_errors=True)


def write_config(
    directory: Path,
    users: list[User],
    dest: Path,
    extra: str = "",
    source: str = "{home}/.t3/userdata/state.sqlite",
    usermap_text: str | None = None,
) -> Path:
    """Write usermap + config.toml into `directory`; return the config path."""
    usermap = directory / "usermap"
    if usermap_text is None:
        usermap_text = "".join(f"sso-{user.name}={user.name}\n" for user in users)
    usermap.write_text(usermap_text)
    config = directory / "config.toml"
    min_uid = min([user.uid for user in users] + [1000])
    config.write_text(
        f'usermap = "{usermap}"\ndest = "{dest}"\nsource = "{source}"\nmin_uid = {min_uid}\n'
        f"{extra}\n"
    )
    return config


def t3backupd(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (as the test's own user, root in CI)."""
    return subprocess.run(
        [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "T3BACKUPD_CONFIG": ""},
    )


def spawn_as(user: User, command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start a long-running command as `user` (plain Popen when not root), text pipes."""
    return subprocess.Popen(command, **as_user(user), text=True, **kwargs)


def sha256sum_check(user: User, directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Run the real `sha256sum -c NAME.sha256` as `user` inside `directory` (no check)."""
    script = 'cd "$1" && exec sha256sum --strict -c -- "$2"'
    return run_as(user, ["sh", "-c", script, "sh", str(directory), name + ".sha256"], check=False)


def snapshot_files(directory: Path) -> list[str]:
    """Names in `directory` that look like snapshots (`state-*.sqlite`), sorted."""
    return sorted(
        entry.name
        for entry in directory.iterdir()
        if entry.name.startswith("state-") and entry.name.endswith(".sqlite")
    )


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a CLI run's stderr, parsed (other lines are ignored)."""
    events = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def signal_and_wait(
    process: subprocess.Popen[str], signum: int, timeout: float
) -> tuple[str, str, float]:
    """Send `signum` to a CLI started with text pipes; its (stdout, stderr, seconds until
    it exited). A CLI still there after `timeout` is killed and the test fails."""
    started = time.monotonic()
    process.send_signal(signum)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the CLI did not exit after signal {signum}: {stderr[-2000:]}")
    return stdout, stderr, time.monotonic() - started
