"""The offsite commands follow the CLI's own rules (issue 21 items 5 and 8): global
options before or after `offsite SUBCOMMAND`, -q quiets them, and `list --offsite` reads
like `list` (the same time, age and size columns; an id per copy, for borg too). Real
users, real WAL databases, the real CLI, each engine's real repository."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from support.offsite import Offsite
from support.snapshots import MakeUser, take_snapshot
from support.system import PYTHON, create_state_db

pytestmark = [pytest.mark.root]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with exactly these arguments (no -c put first, unlike `t3backupd`)."""
    return subprocess.run(
        [PYTHON, "-I", "-m", "t3backupd", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )


def copy_lines(stdout: str) -> list[list[str]]:
    """The per-snapshot lines of a human listing, as columns."""
    return [line.split() for line in stdout.splitlines() if line.startswith("  state-")]


def test_offsite_commands_take_options_after_them_are_quiet_and_list_like_list(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=61)
    config = str(each_engine.write([user]))
    init = cli("offsite", "init", "-c", config)  # the global option after the subcommand
    assert init.returncode == 0, init.stderr
    assert "repository" in init.stdout
    take_snapshot(Path(config), user)
    time.sleep(1.05)  # a second name (names have a one-second resolution)
    take_snapshot(Path(config), user)
    quiet = cli("offsite", "sync", "-q", "--user", user.name, "-c", config)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert quiet.stdout == "", quiet.stdout
    loud = cli("-c", config, "offsite", "sync", "--user", user.name)
    assert loud.returncode == 0 and f"{user.name}: ok 0 uploaded" in loud.stdout, loud.stdout
    checked = cli("offsite", "check", "--quiet", "-c", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == "", checked.stdout

    local = copy_lines(cli("-c", config, "list").stdout)
    offsite = copy_lines(cli("list", "--offsite", "-c", config).stdout)
    assert len(local) == len(offsite) == 2, (local, offsite)
    # name, date, time, age, "ago", size, unit, "schema", the app's schema version (root's
    # record of each snapshot, and the copy's): column for column what `list` prints.
    assert [row[:3] for row in offsite] == [row[:3] for row in local]
    assert [row[4:9] for row in offsite] == [row[4:9] for row in local]
    assert all(row[4] == "ago" and row[3][-1] in "mhd" for row in offsite), offsite
    assert all(row[7] == "schema" and row[8].isdigit() for row in local), local
    ids = [row[9] for row in offsite]
    assert len(set(ids)) == 2 and "t3backup" not in ids, ids
