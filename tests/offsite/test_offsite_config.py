"""Offsite configuration handling (issue 21 items 1, 4; issue 20 items 4, 6), through the
real CLI with real users and a real restic repository:
- a user's own commands work with any `[offsite]` section: root's secrets are opened
  only where they are used, by root;
- check-config covers `[offsite]`: keys and origins, the engine binary and its version,
  the secrets' owner and mode, the next prune and check, warnings (`--strict` fails);
- a repository URL with a password in a config others can read is refused in one line
  naming offsite.repository; `repository_file` is the safe way, and works;
- `cache_dir` is trusted like the config: a planted link or a user's directory is
  refused in one line, and nothing of the user's is touched;
- root records when it first saw a copy offsite (T3BackupOffsiteNeverChecked counts
  from it, not from the copy's own time).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import time
from pathlib import Path

import pytest
from support.offsite import Offsite
from support.snapshots import MakeUser, take_snapshot
from support.system import PYTHON, create_state_db, run_as, t3backupd

from t3backupd.core.usermap import User
from t3backupd.root.offsite import checkrecord

pytestmark = pytest.mark.root


def as_user(user_config: Path, user: object, *args: str) -> subprocess.CompletedProcess[str]:
    return run_as(user, [PYTHON, "-I", "-m", "t3backupd", "-c", str(user_config), *args],
                  check=False, timeout=300)  # type: ignore[arg-type]  # fmt: skip


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def site_for(offsite: Offsite, make_user: MakeUser, seed: int) -> tuple[User, Path]:
    """A real user with a live database, and the site's config serving them."""
    user = make_user()
    create_state_db(user, size_mb=1, seed=seed)
    return user, offsite.write([user])


def test_a_user_runs_their_own_commands_with_an_offsite_section(
    offsite: Offsite, make_user: MakeUser
) -> None:
    user, config = site_for(offsite, make_user, 31)
    assert stat.S_IMODE(config.stat().st_mode) == 0o644  # readable by users, no secret in it
    assert stat.S_IMODE(offsite.password.stat().st_mode) == 0o600
    name = take_snapshot(config, user)
    target = Path(user.home) / "mine.sqlite"
    for args in (
        ["list"],
        ["verify", "--latest"],
        ["restore", "--user", user.name, "--to", str(target)],
        ["adopt", "--user", user.name],
        ["check-config"],
    ):
        result = as_user(config, user, *args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "password_file" not in result.stderr, (args, result.stderr)
    assert target.stat().st_uid == user.uid
    shown = as_user(config, user, "check-config").stdout
    assert f"offsite.password_file {offsite.password}: file, owner uid 0, mode 0600" in shown
    assert name in as_user(config, user, "list").stdout
    # What uses the secrets still refuses a user, in one line.
    refused = as_user(config, user, "offsite", "sync")
    assert refused.returncode == 2
    assert "offsite.password_file" in one_line(refused.stderr)


def test_check_config_covers_offsite_and_strict_fails_on_its_warnings(
    offsite: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    config = offsite.write([user], restic="/nonexistent/restic", keep_daily=9)
    result = t3backupd(config, "check-config")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "  offsite.restic" in out and '"/nonexistent/restic"  (file)' in out
    assert "offsite.keep_daily" in out and "= 9  (file)" in out
    assert "= 12  (default)" in out  # keep_monthly
    assert "engine restic: /nonexistent/restic not found" in out
    assert "warning: offsite.restic: /nonexistent/restic not found" in result.stdout + result.stderr
    assert f"offsite.password_file {offsite.password}: file, owner uid 0, mode 0600" in out
    assert "offsite prune '15 5 * * 0'" in out and "offsite check '45 5 * * 0'" in out
    assert "next: " in out
    strict = t3backupd(config, "check-config", "--strict")
    assert strict.returncode == 1, strict.stdout + strict.stderr

    config = offsite.write([user])
    found = t3backupd(config, "check-config").stdout
    assert "engine restic: " in found and "restic 0." in found, found


def test_borg_cache_warning_names_borg(offsite: Offsite, make_user: MakeUser) -> None:
    user = make_user()
    offsite.write([user])
    text = offsite.config.read_text().replace('cache_dir = "', 'engine = "borg"\ncache_dir = "')
    text = text.replace(f'cache_dir = "{offsite.sandbox / "cache"}"', 'cache_dir = "/srv/t3c"')
    text = text.replace(f"repository = {json.dumps(offsite.backend.repository)}",
                        f'repository = "{offsite.sandbox / "borg-repo"}"')  # fmt: skip
    offsite.config.write_text(text)
    result = t3backupd(offsite.config, "check-config")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if "offsite.cache_dir /srv" in line]
    assert len(warnings) == 1 and "borg cannot keep its cache there" in warnings[0], warnings
    assert "restic" not in warnings[0]


def test_a_password_in_a_readable_config_is_refused_and_repository_file_works(
    offsite: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=32)
    word = secrets.token_hex(8)
    config = offsite.write([user])
    text = config.read_text()
    leaky = text.replace(f"repository = {json.dumps(offsite.backend.repository)}",
                         f'repository = "rest:http://u:{word}@127.0.0.1:9/r"')  # fmt: skip
    config.write_text(leaky)
    for args in (["check-config"], ["list"], ["run"]):
        refused = t3backupd(config, *args, timeout=60)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        line = one_line(refused.stderr)
        assert "offsite.repository: has a password in it" in line and "0644" in line
        assert word not in refused.stderr + refused.stdout
    os.chmod(config, 0o600)
    assert t3backupd(config, "check-config").returncode == 0
    # The safe way: the URL in a root-only file, the config readable by all.
    url = offsite.sandbox / "repository-url"
    url.write_text(offsite.backend.repository + "\n")
    os.chmod(url, 0o600)
    config.write_text(text.replace(f"repository = {json.dumps(offsite.backend.repository)}",
                                   f'repository_file = "{url}"'))  # fmt: skip
    os.chmod(config, 0o644)
    take_snapshot(config, user)
    init = t3backupd(config, "offsite", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"the repository in {url}" in init.stdout  # the file is named, not the URL
    sync = t3backupd(config, "offsite", "sync")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert f"{user.name}: ok 1 uploaded" in sync.stdout
    os.chmod(url, 0o644)
    loose = t3backupd(config, "offsite", "sync")
    assert loose.returncode == 2 and "offsite.repository_file" in one_line(loose.stderr)


@pytest.mark.parametrize("planted", ["link", "directory"])
def test_an_untrusted_cache_dir_is_refused_and_nothing_of_the_user_is_touched(
    offsite: Offsite, make_user: MakeUser, planted: str
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=33)
    target = Path(user.home) / "mine"
    run_as(user, ["mkdir", "-m", "0755", str(target)])
    cache = Path("/tmp") / f"t3bt-cache-{secrets.token_hex(4)}"
    try:
        if planted == "link":
            run_as(user, ["ln", "-s", str(target), str(cache)])
        else:
            run_as(user, ["mkdir", "-m", "0755", str(cache)])
        config = offsite.write([user])
        own_cache = f'cache_dir = "{offsite.sandbox / "cache"}"'
        config.write_text(config.read_text().replace(own_cache, f'cache_dir = "{cache}"'))
        take_snapshot(config, user)
        warned = t3backupd(config, "check-config", "--strict")
        assert warned.returncode == 1
        assert f"warning: offsite.cache_dir {cache} is refused" in warned.stdout + warned.stderr
        for args in (["offsite", "init"], ["offsite", "sync"]):
            result = t3backupd(config, *args)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            assert f"offsite.cache_dir {cache} refused" in result.stdout + result.stderr
            assert "Traceback" not in result.stdout + result.stderr
        for where in (target, cache):
            info = os.lstat(where)
            assert info.st_uid == user.uid
            if not stat.S_ISLNK(info.st_mode):
                assert stat.S_IMODE(info.st_mode) == 0o755 and not any(where.iterdir())
    finally:
        subprocess.run(["rm", "-rf", str(cache)], check=False)


def test_root_records_when_it_first_saw_a_copy_offsite(
    offsite: Offsite, make_user: MakeUser
) -> None:
    user, config = site_for(offsite, make_user, 34)
    take_snapshot(config, user)
    assert t3backupd(config, "offsite", "init").returncode == 0
    cache = str(offsite.sandbox / "cache")
    assert checkrecord.load(cache, time.time()) is None
    before = time.time()
    assert t3backupd(config, "offsite", "sync").returncode == 0
    record = checkrecord.load(cache, time.time())
    assert record is not None and before <= record.first_copy_seen <= time.time()
    assert record.last_check == 0  # seen, never checked
    take_snapshot(config, user)
    assert t3backupd(config, "offsite", "sync").returncode == 0
    assert checkrecord.load(cache, time.time()) == record  # the first time counts
