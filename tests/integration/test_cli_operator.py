"""The operator's view of the CLI (issue 12), through the real console script: its real
stdout, stderr and exit status, with real users, real snapshots and a real pty.

- read-only commands (list, verify, restore, adopt) create nothing, and say so when
  there is no backup directory (a mistyped T3_BACKUP_DEST included);
- a user who is not root lists and verifies their own backups under the root-owned dest;
- on a terminal the human result is printed once, events only when asked (-v);
- check-config shows every key with its origin and warns; --strict fails on skipped lines;
- verify and list share one order (newest first); snapshot says what it pruned;
- adopt gives legacy snapshots a checksum after an integrity check, never overwriting one.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import need
from support.snapshots import MakeUser, json_config, take_snapshot
from support.system import create_state_db, log_events, sha256sum_check, write_config

from t3backupd.core.config import all_keys

CONSOLE = str(Path(sys.executable).parent / "t3backupd")


def console(
    *args: str, env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed console script (as `user` through runuser), no terminal."""
    command = [CONSOLE, *args]
    if user is not None:
        need(shutil.which("runuser") is not None, "needs runuser (Debian package util-linux)")
        command = ["runuser", "-u", user, "--", *command]
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=environment, cwd="/"
    )


def on_pty(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The console script with stdin, stdout and stderr on one real pty: (status, output)."""
    master, slave = pty.openpty()
    environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb", **(env or {})}
    process = subprocess.Popen(
        [CONSOLE, *args], stdin=slave, stdout=slave, stderr=slave, env=environment, cwd="/"
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the pty
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    status = process.wait(timeout=30)
    return status, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def tree(path: Path) -> list[str]:
    """Every path under `path` (what a command must not change)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- item 2: read-only commands create nothing --------------------------------------------


@pytest.mark.root
def test_a_mistyped_dest_creates_nothing_and_every_read_only_command_exits_1(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=21)
    config = json_config(sandbox, [user])
    take_snapshot(config, user)
    before = tree(sandbox)
    mistyped = sandbox / "t3-none"
    env = {"T3_BACKUP_DEST": str(mistyped)}
    target = Path(user.home) / "copy.sqlite"
    for args in (
        ["list"],
        ["list", "--json"],
        ["verify"],
        ["verify", "--latest", "--json"],
        ["restore", "--user", user.name, "--to", str(target)],
        ["restore", "--user", user.name, "--in-place"],
        ["adopt", "--user", user.name],
    ):
        result = console("-c", str(config), *args, env=env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        line = one_line(result.stderr)
        assert f"no backup directory {mistyped}" in line, line
        assert "environment T3_BACKUP_DEST" in line, line
        assert result.stdout == "", (args, result.stdout)
        assert not mistyped.exists(), f"{args} created {mistyped}"
    assert not target.exists()
    assert tree(sandbox) == before


@pytest.mark.root
def test_a_user_never_backed_up_gets_no_directory_from_list_verify_or_restore(
    sandbox: Path, make_user: MakeUser
) -> None:
    done, never = make_user(), make_user()
    create_state_db(done, size_mb=1, seed=22)
    create_state_db(never, size_mb=1, seed=23)
    config = json_config(sandbox, [done, never])
    take_snapshot(config, done)
    user_dir = sandbox / "dest" / never.name
    assert not user_dir.exists()

    listing = console("-c", str(config), "list")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert f"{never.name}: no snapshots (never backed up: no backup directory {user_dir})" in (
        listing.stdout
    )
    assert f"{done.name}: 1 snapshot(s), newest first" in listing.stdout

    verify = console("-c", str(config), "verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"{never.name}: NO SNAPSHOTS to verify (never backed up)" in verify.stdout
    assert "1 user(s) without any snapshot" in verify.stdout
    document = json.loads(console("-c", str(config), "verify", "--json").stdout)
    assert document["ok"] is False
    assert document["summary"]["users_without_snapshots"] == 1

    # The served user with snapshots alone: 0.
    only = console("-c", str(config), "verify", "--user", done.name)
    assert only.returncode == 0, only.stdout + only.stderr

    target = Path(never.home) / "copy.sqlite"
    for where in (["--to", str(target)], ["--in-place"]):
        result = console("-c", str(config), "restore", "--user", never.name, *where)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
        assert len(lines) == 1 and "no_directory" in lines[0], result.stderr
        assert str(user_dir) in lines[0]
    assert not user_dir.exists(), "a read-only command created <dest>/<user>"
    assert not target.exists()


# --- item 3: a user who is not root ---------------------------------------------------------


@pytest.mark.root
def test_a_user_lists_verifies_and_restores_their_own_backups_without_root(
    sandbox: Path, make_user: MakeUser
) -> None:
    user, other = make_user(), make_user()
    create_state_db(user, size_mb=1, seed=24)
    create_state_db(other, size_mb=1, seed=25)
    config = json_config(sandbox, [user, other])
    name = take_snapshot(config, user)
    take_snapshot(config, other)
    assert (sandbox / "dest").stat().st_uid == 0

    listing = console("-c", str(config), "list", user=user.name)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert f"{user.name}: 1 snapshot(s)" in listing.stdout and name in listing.stdout
    assert other.name not in listing.stdout
    assert "usermap entry skipped" not in listing.stderr  # the others' lines are expected

    verify = console("-c", str(config), "verify", "--latest", user=user.name)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{user.name}: {name}  ok" in verify.stdout

    target = Path(user.home) / "mine.sqlite"
    restore = console("-c", str(config), "restore", "--user", user.name, "--to", str(target),
                      user=user.name)  # fmt: skip
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert target.stat().st_uid == user.uid

    # Another user's backups: one line saying why.
    refused = console("-c", str(config), "list", "--user", other.name, user=user.name)
    assert refused.returncode == 2
    assert "run as root" in one_line(refused.stderr)

    # What needs root says so in one line, and changes nothing.
    before = tree(sandbox / "dest")
    snap = console("-c", str(config), "snapshot", user=user.name)
    assert snap.returncode == 1
    assert "run this command as root" in snap.stdout, snap.stdout + snap.stderr
    in_place = console("-c", str(config), "restore", "--user", user.name, "--in-place",
                       user=user.name)  # fmt: skip
    assert in_place.returncode == 1
    assert "run it as root" in one_line(in_place.stderr)
    assert tree(sandbox / "dest") == before


# --- item 4: once on a terminal, events only when asked -------------------------------------


@pytest.mark.root
def test_on_a_terminal_the_result_is_printed_once_and_events_only_when_asked(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=26)
    usermap = f"bad=line=here\nsso-{user.name}={user.name}\n"
    config = write_config(sandbox, [user], sandbox / "dest", usermap_text=usermap)
    name = take_snapshot(config, user)

    status, text = on_pty("-c", str(config), "verify")
    assert status == 0, text
    assert text.count(f"{user.name}: {name}  ok") == 1, text
    assert text.count("bad=line=here") == 1, text
    assert "{" not in text and "event" not in text and "[info" not in text, text

    status, text = on_pty("-c", str(config), "check-config")
    assert status == 0, text
    assert text.count("bad=line=here") == 1, text

    status, text = on_pty("verify", "-q", "-c", str(config))
    assert status == 0, text
    assert name not in text and "verified" not in text, text

    status, text = on_pty("-c", str(config), "-v", "verify")
    assert status == 0, text
    assert "verify" in text and "user=" in text, text  # console-rendered events

    status, text = on_pty("-c", str(config), "--log-format", "json", "verify")
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert "verify" in [event["event"] for event in events], text

    # Not a terminal: the human result on stdout, JSON events on stderr.
    piped = console("-c", str(config), "verify")
    assert piped.returncode == 0
    assert piped.stdout.count(f"{name}  ok") == 1
    events = [json.loads(line) for line in piped.stderr.splitlines() if line.startswith("{")]
    assert {"usermap entry skipped", "verify"} <= {event["event"] for event in events}
    quiet = console("-q", "-c", str(config), "verify")
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert all(json.loads(line)["level"] != "info" for line in quiet.stderr.splitlines())


# --- item 5: check-config ---------------------------------------------------------------------


@pytest.mark.root
def test_check_config_prints_every_key_with_its_origin_and_warns_about_dest(
    sandbox: Path, make_user: MakeUser
) -> None:
    usermap = sandbox / "usermap"
    usermap.write_text("".join(f"bad line {n}\n" for n in range(9)))
    config = sandbox / "config.toml"
    config.write_text(f'usermap = "{usermap}"\n[retention]\nkeep = 30\n')
    env = {"T3_BACKUP_DEST": "/srv/x"}
    result = console("-c", str(config), "check-config", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    effective = {
        match.group(1): (match.group(2), match.group(3))
        for match in re.finditer(r"^  (\S+) += (.*)  \((.*)\)$", result.stdout, re.MULTILINE)
    }
    assert sorted(effective) == sorted(all_keys())
    assert effective["dest"] == ('"/srv/x"', "environment T3_BACKUP_DEST")
    assert effective["retention.keep"] == ("30", "file")
    assert effective["metrics.listen"] == ('"127.0.0.1:9745"', "default")
    assert effective["verify.cron"] == ('""', "default")
    assert effective["schedule.catch_up"] == ("true", "default")
    assert "warning: dest /srv/x (environment T3_BACKUP_DEST) is outside" in result.stdout
    assert "ReadWritePaths=" in result.stdout
    assert result.stdout.count("skipped line") == 9

    strict = console("-c", str(config), "check-config", "--strict", env=env)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    # Two warnings: dest outside the unit's writable paths, and a usermap serving nobody.
    assert "--strict: 9 skipped usermap line(s), 2 warning(s)" in strict.stdout
    assert "serves no user" in strict.stdout
    user = make_user()  # a usermap that serves someone, and nothing else to warn about
    usermap.write_text(f"sso-{user.name}={user.name}\n")
    config.write_text(f'usermap = "{usermap}"\ndest = "/var/backups/t3-state"\n')
    clean = console("check-config", "--strict", "-c", str(config))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "warning" not in clean.stdout


# --- item 7: papercuts ---------------------------------------------------------------------


@pytest.mark.root
def test_list_and_verify_share_newest_first_and_snapshot_says_what_it_pruned(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=27)
    config = json_config(sandbox, [user], extra="[retention]\nkeep = 2\n")
    names = []
    for _ in range(2):
        names.append(take_snapshot(config, user))
        time.sleep(1.05)
    third = console("snapshot", "-c", str(config))  # -c after the command
    assert third.returncode == 0, third.stdout + third.stderr
    assert f"; pruned 1: {names[0]}" in third.stdout, third.stdout
    names = [names[1], third.stdout.split()[2]]
    listed = [line.split()[0] for line in console("-c", str(config), "list").stdout.splitlines()
              if line.startswith("  ")]  # fmt: skip
    verified = [line.split()[1] for line in console("-c", str(config), "verify").stdout.splitlines()
                if line.startswith(f"{user.name}: state-")]  # fmt: skip
    assert listed == verified == names[::-1]
    document = json.loads(console("-c", str(config), "verify", "--json").stdout)
    assert [item["name"] for item in document["users"][0]["snapshots"]] == names[::-1]
    document = json.loads(console("-c", str(config), "list", "--json").stdout)
    assert [item["name"] for item in document["users"][0]["snapshots"]] == names[::-1]


def test_help_has_no_markdown_every_option_has_help_and_commands_document_exits() -> None:
    from t3backupd.root.cli import DOCS

    top = console("--help")
    assert top.returncode == 0 and "`" not in top.stdout
    assert "T3_BACKUP_DEST" in top.stdout
    for name in DOCS:
        page = console(name, "--help")
        assert page.returncode == 0, page.stderr
        assert "`" not in page.stdout, name
        assert "exit status:" in page.stdout and "environment:" in page.stdout, name
        assert DOCS[name].description.split()[0] in page.stdout, name
    from t3backupd.root.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    assert isinstance(subparsers.choices, dict)
    for sub in [parser, *subparsers.choices.values()]:
        for action in sub._actions:
            if action.option_strings:
                assert action.help, f"{sub.prog} {action.option_strings} has no help"


# --- item 8: adopt ----------------------------------------------------------------------------


def _to_legacy(directory: Path, name: str, legacy: str) -> Path:
    """Rename a snapshot to the legacy script's name, without a checksum (as it left them)."""
    os.rename(directory / name, directory / legacy)
    (directory / f"{name}.sha256").unlink()
    return directory / legacy


def _corrupt_a_table(path: Path) -> None:
    connection = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute(
            "SELECT max(rootpage) FROM sqlite_schema WHERE type = 'table'"
        ).fetchone()[0]
    finally:
        connection.close()
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xa5" * page_size)


@pytest.mark.root
def test_adopt_checksums_good_legacy_snapshots_refuses_bad_ones_and_never_overwrites(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=28)
    config = json_config(sandbox, [user])
    directory = sandbox / "dest" / user.name
    good = _to_legacy(directory, take_snapshot(config, user), "state-20250101-033001.sqlite")
    time.sleep(1.05)
    bad = _to_legacy(directory, take_snapshot(config, user), "state-20250102-033001.sqlite")
    _corrupt_a_table(bad)
    time.sleep(1.05)
    kept = take_snapshot(config, user)
    foreign = directory / "state-20250103-033001.sqlite"
    foreign.write_bytes(good.read_bytes())
    os.chown(foreign, user.uid, user.gid)
    planted = Path(f"{foreign}.sha256")
    planted.write_text("0" * 64 + f"  {foreign.name}\n")  # wrong, but never replaced
    planted_bytes, kept_checksum = planted.read_bytes(), (directory / f"{kept}.sha256").read_bytes()

    before = console("-c", str(config), "verify")
    assert before.returncode == 1
    assert f"{good.name}  MISSING CHECKSUM" in before.stdout
    # The verify event says the user's snapshots failed, not "ok" beside failures=3.
    event = next(e for e in log_events(before.stderr) if e["event"] == "verify")
    assert (event["status"], event["reason"], event["failures"]) == ("failed", "verify_failed", 3)

    result = console("-c", str(config), "adopt", "--user", user.name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{user.name}: {good.name}  adopted (checksum written)" in result.stdout
    assert f"{user.name}: {bad.name}  NOT ADOPTED: INTEGRITY ERRORS" in result.stdout
    assert sha256sum_check(user, directory, good.name).returncode == 0
    assert not Path(f"{bad}.sha256").exists()
    assert planted.read_bytes() == planted_bytes
    assert (directory / f"{kept}.sha256").read_bytes() == kept_checksum
    assert Path(f"{good}.sha256").stat().st_uid == user.uid  # written as the user

    after = console("-c", str(config), "verify", "--json")
    outcomes = {item["name"]: item["outcome"] for item in json.loads(after.stdout)["users"][0]
                ["snapshots"]}  # fmt: skip
    assert outcomes[good.name] == "ok" and outcomes[kept] == "ok"
    assert outcomes[foreign.name] == "checksum_mismatch"

    bad.unlink()
    again = console("-c", str(config), "adopt", "--user", user.name)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to adopt" in again.stdout
