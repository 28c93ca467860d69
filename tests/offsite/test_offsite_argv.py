"""No secret in an engine's argv (issue 20 item 4): any local user reads every process's
/proc/PID/cmdline, and a restic repository URL can carry a password (rest:https://u:p@...).
restic gets its repository through its environment (root's alone) instead.

restic is run through a wrapper (the `restic` key) that records its own argv and then
execs Debian's restic: real restic, real repositories on each back-end."""

from __future__ import annotations

import shutil

from support.offsite import Offsite
from support.snapshots import MakeUser, take_snapshot
from support.system import create_state_db, t3backupd

RECORDING_WRAPPER = """#!/bin/sh
printf '%s\\n' "$*" >> {log}
exec {restic} "$@"
"""


def test_the_repository_never_reaches_restics_argv(
    any_offsite: Offsite, make_user: MakeUser
) -> None:
    site = any_offsite
    user = make_user()
    create_state_db(user, size_mb=1, seed=3)
    log = site.sandbox / "restic-argv.log"
    wrapper = site.sandbox / "restic-recording"
    real = shutil.which("restic")
    assert real is not None
    wrapper.write_text(RECORDING_WRAPPER.format(log=log, restic=real))
    wrapper.chmod(0o755)
    config = site.write([user], restic=str(wrapper))

    for command in (["offsite", "init"], ["snapshot"], ["offsite", "sync"],
                    ["list", "--offsite"], ["offsite", "check"]):  # fmt: skip
        if command == ["snapshot"]:
            take_snapshot(config, user)
            continue
        result = t3backupd(config, *command)
        assert result.returncode == 0, (command, result.stdout + result.stderr)

    argv = log.read_text().splitlines()
    assert len(argv) >= 4, argv  # restic really ran for each command
    leaked = [
        line
        for line in argv
        if site.backend.repository in line or {"--repo", "-r"} & set(line.split())
    ]
    assert leaked == [], leaked
