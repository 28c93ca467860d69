"""No green run on a broken set-up (issue 21): a missing or unreadable usermap is one line
naming it and exit 2 for every command, `run` included (before it binds its port); a
usermap that serves nobody is one warning line and the command's usual exit status.

The legacy script (and t3backupd before issue 21) backed up nobody and exited 0 when the
usermap was missing: a typo in `usermap` looked like a green run.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import need
from support.daemon import RUN_AS_ME, free_port
from support.system import IS_ROOT, PYTHON, create_state_db, run_as, t3backupd

from t3backupd.core.usermap import User

# Every command that reads the usermap, with the arguments it needs to get that far.
COMMANDS = [
    ("snapshot",),
    ("verify",),
    ("list",),
    ("list", "--offsite"),
    ("adopt", "--user", "nobody-here"),
    ("restore", "--user", "nobody-here", "--to", "/var/tmp/t3-never-written.sqlite"),
    ("offsite", "sync"),
    ("offsite", "check"),
    ("check-config",),
    ("run", *RUN_AS_ME),
]


def write_config(sandbox: Path, usermap: Path, port: int = 0) -> Path:
    config = sandbox / "config.toml"
    listen = f'[metrics]\nlisten = "127.0.0.1:{port}"\n' if port else ""
    config.write_text(
        f'usermap = "{usermap}"\ndest = "{sandbox / "dest"}"\n{listen}[log]\nformat = "json"\n'
    )
    return config


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_missing_usermap_is_one_line_and_exit_2_for_every_command(
    sandbox: Path, command: tuple[str, ...]
) -> None:
    usermap = sandbox / "no-such-usermap"
    result = t3backupd(write_config(sandbox, usermap), *command, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result)
    assert line.startswith("t3backupd: ") and str(usermap) in line
    assert "usermap unreadable: No such file or directory" in line
    assert result.stdout == ""


UNREADABLE_COMMANDS = [("snapshot",), ("verify",), ("list",), ("offsite", "sync"),
                       ("run", "--unprivileged")]  # fmt: skip


@pytest.mark.parametrize("command", UNREADABLE_COMMANDS, ids=" ".join)
def test_a_usermap_the_caller_cannot_read_is_one_line_and_exit_2(
    sandbox: Path, make_user: Callable[[], User], command: tuple[str, ...]
) -> None:
    need(IS_ROOT, "needs root: a real user who cannot read root's 0600 usermap")
    user = make_user()
    usermap = sandbox / "usermap"
    usermap.write_text(f"sso-{user.name}={user.name}\n")
    usermap.chmod(0o600)
    config = write_config(sandbox, usermap)
    config.chmod(0o644)
    result = run_as(user, [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), *command],
                    check=False, timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result)
    assert str(usermap) in line and "usermap unreadable: Permission denied" in line


def test_run_with_a_missing_usermap_exits_2_before_binding_its_port(sandbox: Path) -> None:
    port = free_port()
    config = write_config(sandbox, sandbox / "no-such-usermap", port)
    result = subprocess.run(
        [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "run", *RUN_AS_ME],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usermap unreadable" in one_line(result)
    with socket.socket() as probe:  # never bound (and nothing left listening)
        probe.bind(("127.0.0.1", port))


EMPTY_USERMAPS = {
    "empty": "",
    "comments only": "# authentik_name=os_user\n\n   # nobody yet\n",
}


@pytest.mark.parametrize("text", EMPTY_USERMAPS.values(), ids=EMPTY_USERMAPS.keys())
@pytest.mark.parametrize("command", [("snapshot",), ("verify",), ("list",), ("list", "--json")],
                         ids=" ".join)  # fmt: skip
def test_a_usermap_serving_nobody_is_one_warning_and_the_usual_exit(
    sandbox: Path, text: str, command: tuple[str, ...]
) -> None:
    usermap = sandbox / "usermap"
    usermap.write_text(text)
    (sandbox / "dest").mkdir()
    result = t3backupd(write_config(sandbox, usermap), *command)
    assert result.returncode == 0, result.stdout + result.stderr
    event = json.loads(one_line(result))
    assert (event["event"], event["level"], event["usermap"]) == (
        "usermap serves no user",
        "warning",
        str(usermap),
    )
    if "--json" in command:
        assert json.loads(result.stdout) == {"users": []}  # stdout stays machine-readable


def test_every_line_skipped_is_one_line_per_skip_and_one_warning(sandbox: Path) -> None:
    usermap = sandbox / "usermap"
    usermap.write_text("sso-root=root\nnot a mapping line\n")
    result = t3backupd(write_config(sandbox, usermap), "snapshot")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert events == ["usermap entry skipped", "usermap entry skipped", "usermap serves no user"]


def test_check_config_on_a_usermap_serving_nobody_warns_and_fails_strict(sandbox: Path) -> None:
    usermap = sandbox / "usermap"
    usermap.write_text("# nobody yet\n")
    config = write_config(sandbox, usermap)
    result = t3backupd(config, "check-config")
    assert result.returncode == 0, result.stderr
    assert f"warning: usermap {usermap} serves no user" in result.stdout
    assert "0 user(s) served, 0 skipped" in result.stdout
    strict = t3backupd(config, "check-config", "--strict")
    assert strict.returncode == 1 and "serves no user" in strict.stdout


@pytest.mark.root
def test_a_name_with_a_space_is_skipped_in_one_line_not_joined_into_another_user(
    sandbox: Path, make_user: Callable[[], User]
) -> None:
    """`x=nc 3` served the user `nc3` (the legacy awk deleted the space): now the line is
    skipped, one line naming the usermap and the line, and that user is not served."""
    user = make_user()
    create_state_db(user, size_mb=1, seed=31)
    usermap = sandbox / "usermap"
    usermap.write_text(f"# the name split in two\nx={user.name[:3]} {user.name[3:]}\n")
    result = t3backupd(write_config(sandbox, usermap), "-q", "snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = [json.loads(line) for line in result.stderr.splitlines()]
    assert skipped[0]["event"] == "usermap entry skipped", skipped
    assert (skipped[0]["line"], skipped[0]["usermap"]) == (2, str(usermap)), skipped[0]
    assert "whitespace inside the name" in skipped[0]["reason"], skipped[0]
    assert not (sandbox / "dest" / user.name).exists(), "the joined name was served"
    check = t3backupd(write_config(sandbox, usermap), "check-config")
    assert f"skipped line 2 ('{user.name[:3]} {user.name[3:]}'): whitespace" in check.stdout
