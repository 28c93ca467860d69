"""Bad input, through the real console script (issue 21): every case below must end with a
non-zero exit, exactly one line on stderr naming what is wrong (the file, key, line,
option or variable), and no traceback.

The cases cover config keys (types, ranges, unknown keys, `[offsite]`), usermap lines,
command line options and arguments, the environment overrides, and the offsite secret
files, as root and as a user who is not root. One real user and one sandbox serve the
whole module; each case gets its own directory with its own config, usermap and secrets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import need
from support.system import create_state_db, make_sandbox, user_factory

from t3backupd.core.usermap import User

CONSOLE = str(Path(sys.executable).parent / "t3backupd")

Setup = Callable[[Path, User], None]


@dataclass(frozen=True)
class Case:
    """One bad input. `args` and the config text may use {dir} (the case's directory)
    and {user} (the served user); `names` must appear in the one stderr line."""

    id: str
    args: tuple[str, ...]
    names: str
    top: str = ""  # top-level config keys (before any section)
    sections: str = ""  # config sections, after the top-level keys
    usermap: str = "sso-{user}={user}\n"
    env: dict[str, str] = field(default_factory=dict)
    as_user: bool = False
    code: int = 2
    setup: Setup | None = None
    stdout: str = ""  # the one line is on stdout, the one containing this (check-config)


OFFSITE = (
    '[offsite]\nrepository = "{dir}/repo"\npassword_file = "{dir}/password"\n'
    'cache_dir = "{dir}/cache"\nledger_dir = "{dir}/ledger"\n'
)
CHECK = ("check-config", "-c", "{dir}/config.toml")
STRICT = ("check-config", "--strict", "-q", "-c", "{dir}/config.toml")
INIT = ("offsite", "init", "-c", "{dir}/config.toml")


def key(name: str, top: str = "", sections: str = "") -> Case:
    """A bad config key, seen by check-config."""
    return Case(f"config-{name}", CHECK, name.split(".")[-1], top=top, sections=sections)


def offsite_key(name: str, line: str, engine: str = "") -> Case:
    """A bad `[offsite]` key, seen by check-config (`engine` adds a tail to the id)."""
    tail = "-borg" if "borg" in engine else ""
    sections = OFFSITE + engine + line
    return Case(f"offsite-{name}{tail}", CHECK, f"offsite.{name}", sections=sections)


def chmod(path: str, mode: int) -> Setup:
    return lambda directory, _user: os.chmod(directory / path, mode)


def chown_to_user(path: str) -> Setup:
    return lambda directory, user: os.chown(directory / path, user.uid, user.gid)


def write(path: str, text: str, mode: int = 0o600) -> Setup:
    def setup(directory: Path, _user: User) -> None:
        (directory / path).write_text(text)
        os.chmod(directory / path, mode)

    return setup


def symlink_password(directory: Path, _user: User) -> None:
    (directory / "password").rename(directory / "password.real")
    (directory / "password").symlink_to(directory / "password.real")


def users_cache_dir(directory: Path, user: User) -> None:
    """A cache_dir the user made: root must not use (or chmod) it."""
    (directory / "cache").mkdir(mode=0o755)
    os.chown(directory / "cache", user.uid, user.gid)


def config_is_directory(directory: Path, _user: User) -> None:
    (directory / "config.toml").unlink()
    (directory / "config.toml").mkdir()


CASES = [
    # config keys: types, ranges, unknown keys, syntax
    key("min_uid-type", top='min_uid = "1000"'),
    key("min_uid", top="min_uid = -1"),
    key("max_uid", top="max_uid = 10"),
    key("dest-type", top="dest = 5"),
    key("dest", top='dest = "relative/backups"'),
    key("source", top='source = "{{nothome}}/state.sqlite"'),
    key("frobnicate", top="frobnicate = 1"),
    key("nonsense", sections="[nonsense]\na = 1\n"),
    key("snapshot.speed", sections="[snapshot]\nspeed = 3\n"),
    key("schedule", top="schedule = 3"),
    key("schedule.cron-minute", sections='[schedule]\ncron = "61 * * * *"\n'),
    key("schedule.cron-fields", sections='[schedule]\ncron = "* * *"\n'),
    key("schedule.cron-dom-dow", sections='[schedule]\ncron = "0 3 1 * 1"\n'),
    key("schedule.timezone", sections='[schedule]\ntimezone = "Mars/Olympus"\n'),
    key("schedule.jitter_seconds", sections="[schedule]\njitter_seconds = 90000\n"),
    key("schedule.catch_up", sections='[schedule]\ncatch_up = "yes"\n'),
    key("snapshot.method", sections='[snapshot]\nmethod = "copy"\n'),
    key("snapshot.verify", sections='[snapshot]\nverify = "maybe"\n'),
    key("snapshot.concurrency-0", sections="[snapshot]\nconcurrency = 0\n"),
    key("snapshot.concurrency-65", sections="[snapshot]\nconcurrency = 65\n"),
    key("snapshot.timeout_seconds", sections="[snapshot]\ntimeout_seconds = 0\n"),
    key("snapshot.schema_version", sections='[snapshot]\nschema_version = "v2"\n'),
    key("retention.keep", sections="[retention]\nkeep = -1\n"),
    key("retention.keep-float", sections="[retention]\nkeep = 1.5\n"),
    key("metrics.listen-noport", sections='[metrics]\nlisten = "nohost"\n'),
    key("metrics.listen-port", sections='[metrics]\nlisten = "127.0.0.1:99999"\n'),
    key("metrics.tls_cert", sections='[metrics]\ntls_cert = "{dir}/cert.pem"\n'),
    key("log.level", sections='[log]\nlevel = "loud"\n'),
    key("log.format", sections='[log]\nformat = "xml"\n'),
    key("verify.cron", sections='[verify]\ncron = "bad"\n'),
    Case("config-syntax", CHECK, "config.toml", top="dest = "),
    Case("config-missing", ("check-config", "-c", "{dir}/nothere.toml"), "nothere.toml"),
    Case("config-writable", CHECK, "config.toml", setup=chmod("config.toml", 0o666)),
    Case("config-not-roots", CHECK, "config.toml", setup=chown_to_user("config.toml")),
    Case("config-directory", CHECK, "config.toml", setup=config_is_directory),
    # [offsite] keys
    Case(
        "offsite-no-repository",
        CHECK,
        "offsite.repository",
        sections='[offsite]\npassword_file = "{dir}/password"\n',
    ),
    Case(
        "offsite-repository-and-file",
        CHECK,
        "repository_file",
        sections=OFFSITE + 'repository_file = "{dir}/repository"\n',
    ),
    Case(
        "offsite-no-password_file",
        CHECK,
        "offsite.password_file",
        sections='[offsite]\nrepository = "{dir}/repo"\n',
    ),
    offsite_key("engine", 'engine = "tar"\n'),
    offsite_key("encryption", 'encryption = "none"\n', 'engine = "borg"\n'),
    offsite_key("compression", 'compression = "max"\n', 'engine = "borg"\n'),
    offsite_key("borg", 'borg = "/usr/bin/borg"\n'),
    offsite_key("keep_last", "keep_last = -1\n"),
    offsite_key("check_read_data_subset", 'check_read_data_subset = "2/1"\n'),
    offsite_key("check_read_data_subset", 'check_read_data_subset = "1G"\n', 'engine = "borg"\n'),
    offsite_key("options", 'options = "x"\n'),
    offsite_key("concurrency", "concurrency = 0\n"),
    offsite_key("prune_cron", 'prune_cron = "bad"\n'),
    offsite_key("max_bytes_per_user", "max_bytes_per_user = -5\n"),
    offsite_key("timeout_seconds", 'timeout_seconds = "1h"\n'),
    offsite_key("frobnicate", "frobnicate = 1\n"),
    Case(
        "offsite-password-in-url",
        CHECK,
        "offsite.repository",
        sections='[offsite]\nrepository = "rest:https://t3:secret@rest.example.net/t3/"\n'
        'password_file = "{dir}/password"\n',
    ),
    Case(
        "offsite-cache_dir-users",
        INIT,
        "offsite.cache_dir",
        sections=OFFSITE,
        code=1,
        setup=users_cache_dir,
    ),
    # secret files, opened by the offsite commands
    Case("secret-mode", INIT, "password", sections=OFFSITE, setup=chmod("password", 0o644)),
    Case("secret-owner", INIT, "password", sections=OFFSITE, setup=chown_to_user("password")),
    Case("secret-link", INIT, "password", sections=OFFSITE, setup=symlink_password),
    Case("secret-empty", INIT, "password", sections=OFFSITE, setup=write("password", "")),
    Case(
        "secret-missing",
        INIT,
        "nopassword",
        sections=OFFSITE.replace("{dir}/password", "{dir}/nopassword"),
    ),
    Case(
        "secret-env-password",
        INIT,
        "offsite.env",
        sections=OFFSITE + 'environment_file = "{dir}/offsite.env"\n',
        setup=write("offsite.env", "RESTIC_PASSWORD=x\n"),
    ),
    Case(
        "secret-env-garbage",
        INIT,
        "offsite.env",
        sections=OFFSITE + 'environment_file = "{dir}/offsite.env"\n',
        setup=write("offsite.env", "garbage\n"),
    ),
    Case(
        "secret-repository_file-mode",
        INIT,
        "repository",
        sections=OFFSITE.replace(
            'repository = "{dir}/repo"', 'repository_file = "{dir}/repository"'
        ),
        setup=write("repository", "/srv/x\n", 0o644),
    ),
    # usermap lines (check-config --strict: a skipped line fails)
    Case(
        "usermap-no-equals",
        STRICT,
        "line 2",
        stdout="skipped line",
        usermap="sso-{user}={user}\nnoequals\n",
        code=1,
    ),
    Case(
        "usermap-no-such-user",
        STRICT,
        "line 2",
        stdout="skipped line",
        usermap="sso-{user}={user}\na=nosuchuser\n",
        code=1,
    ),
    Case(
        "usermap-root",
        STRICT,
        "line 2",
        stdout="skipped line",
        usermap="sso-{user}={user}\na=root\n",
        code=1,
    ),
    Case(
        "usermap-nobody",
        STRICT,
        "line 2",
        stdout="skipped line",
        usermap="sso-{user}={user}\na=nobody\n",
        code=1,
    ),
    Case("usermap-missing", CHECK, "usermap", setup=lambda d, _u: (d / "usermap").unlink()),
    Case("usermap-writable", CHECK, "usermap", setup=chmod("usermap", 0o666)),
    # command line
    Case("cli-unknown-command", ("frob",), "frob"),
    Case("cli-no-command", (), "COMMAND"),
    Case("cli-unknown-option", ("list", "--frob"), "--frob"),
    Case("cli-missing-value", ("snapshot", "--user"), "--user"),
    Case("cli-unknown-offsite", ("offsite", "frob"), "frob"),
    Case("cli-log-format", ("--log-format", "yaml", "list"), "--log-format"),
    Case(
        "cli-to-and-in-place",
        ("restore", "-c", "{dir}/config.toml", "--user", "{user}", "--to", "{dir}/x", "--in-place"),
        "--in-place",
    ),
    Case(
        "cli-snapshot-and-at",
        (
            "restore",
            "-c",
            "{dir}/config.toml",
            "--user",
            "{user}",
            "--snapshot",
            "latest",
            "--at",
            "2026-01-01 00:00",
            "--to",
            "{dir}/x",
        ),
        "--at",
    ),
    Case(
        "cli-at-words",
        (
            "restore",
            "-c",
            "{dir}/config.toml",
            "--user",
            "{user}",
            "--at",
            "yesterday",
            "--to",
            "{dir}/x",
        ),
        "--at",
    ),
    Case(
        "cli-at-month",
        (
            "restore",
            "-c",
            "{dir}/config.toml",
            "--user",
            "{user}",
            "--at",
            "2026-13-01 00:00",
            "--to",
            "{dir}/x",
        ),
        "--at",
    ),
    Case(
        "cli-label-chars", ("snapshot", "-c", "{dir}/config.toml", "--label", "bad label!"), "label"
    ),
    Case("cli-label-empty", ("snapshot", "-c", "{dir}/config.toml", "--label", ""), "label"),
    Case("cli-label-long", ("snapshot", "-c", "{dir}/config.toml", "--label", "x" * 65), "label"),
    Case(
        "cli-user-unknown",
        ("list", "-c", "{dir}/config.toml", "--user", "nosuchuser"),
        "nosuchuser",
    ),
    Case("cli-user-not-served", ("list", "-c", "{dir}/config.toml", "--user", "root"), "root"),
    Case(
        "cli-restore-no-target", ("restore", "-c", "{dir}/config.toml", "--user", "{user}"), "--to"
    ),
    Case(
        "cli-snapshot-traversal",
        (
            "restore",
            "-c",
            "{dir}/config.toml",
            "--user",
            "{user}",
            "--snapshot",
            "../../etc/passwd",
            "--to",
            "{dir}/x",
        ),
        "--snapshot",
    ),
    Case(
        "cli-from",
        (
            "restore",
            "-c",
            "{dir}/config.toml",
            "--user",
            "{user}",
            "--from",
            "ftp",
            "--to",
            "{dir}/x",
        ),
        "--from",
    ),
    Case("cli-offsite-without-section", ("offsite", "sync", "-c", "{dir}/config.toml"), "offsite"),
    # environment overrides
    Case("env-keep-text", CHECK, "T3_BACKUP_KEEP", env={"T3_BACKUP_KEEP": "abc"}),
    Case("env-keep-negative", CHECK, "T3_BACKUP_KEEP", env={"T3_BACKUP_KEEP": "-1"}),
    Case("env-timeout-zero", CHECK, "T3_BACKUP_TIMEOUT", env={"T3_BACKUP_TIMEOUT": "0"}),
    Case("env-timeout-text", CHECK, "T3_BACKUP_TIMEOUT", env={"T3_BACKUP_TIMEOUT": "x"}),
    Case("env-dest-relative", CHECK, "T3_BACKUP_DEST", env={"T3_BACKUP_DEST": "rel/dest"}),
    Case(
        "env-dest-missing",
        ("list", "-c", "{dir}/config.toml"),
        "T3_BACKUP_DEST",
        env={"T3_BACKUP_DEST": "{dir}/nodest"},
        code=1,
    ),
    Case(
        "env-config-missing",
        ("check-config",),
        "nothere.toml",
        env={"T3BACKUPD_CONFIG": "{dir}/nothere.toml"},
    ),
    # as a user who is not root
    Case(
        "user-other-user",
        ("list", "-c", "{dir}/config.toml", "--user", "root"),
        "root",
        as_user=True,
    ),
    Case(
        "user-in-place",
        ("restore", "-c", "{dir}/config.toml", "--user", "{user}", "--in-place"),
        "root",
        as_user=True,
        code=1,
    ),
    Case("user-run", ("run", "-c", "{dir}/config.toml"), "--unprivileged", as_user=True),
    Case(
        "user-config-unreadable",
        CHECK,
        "config.toml",
        as_user=True,
        setup=chmod("config.toml", 0o600),
    ),
    Case(
        "user-label",
        ("snapshot", "-c", "{dir}/config.toml", "--label", "bad label!"),
        "label",
        as_user=True,
    ),
    Case(
        "user-list-offsite",
        ("list", "--offsite", "-c", "{dir}/config.toml"),
        "offsite.password_file",
        sections=OFFSITE,
        as_user=True,
        code=1,
    ),
    Case(
        "user-offsite-sync",
        ("offsite", "sync", "-c", "{dir}/config.toml"),
        "offsite.password_file",
        sections=OFFSITE,
        as_user=True,
    ),
    Case("user-env-keep", CHECK, "T3_BACKUP_KEEP", env={"T3_BACKUP_KEEP": "abc"}, as_user=True),
]


@dataclass(frozen=True)
class Host:
    sandbox: Path
    user: User


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """One real user with a database, a sandbox and a dest, shared by every case."""
    with make_sandbox() as sandbox, user_factory() as make_user:
        user = make_user()
        create_state_db(user, size_mb=0.2)
        (sandbox / "dest").mkdir(mode=0o755)
        yield Host(sandbox, user)


def prepare(case: Case, host: Host) -> Path:
    """The case's directory: config, usermap and password file, then its own damage."""
    directory = host.sandbox / case.id
    directory.mkdir(mode=0o755)
    fill = {"dir": str(directory), "user": host.user.name}
    top = case.top.format(**fill)
    (directory / "usermap").write_text(case.usermap.format(**fill))
    (directory / "config.toml").write_text(
        f'usermap = "{directory}/usermap"\n'
        + (f'dest = "{host.sandbox}/dest"\n' if "dest =" not in top else "")
        + ("min_uid = 1000\n" if "min_uid" not in top else "")
        + f"{top}\n{case.sections.format(**fill)}"
    )
    for name in ("config.toml", "usermap"):
        os.chmod(directory / name, 0o644)
    (directory / "password").write_text("correct horse battery staple\n")
    os.chmod(directory / "password", 0o600)
    if case.setup is not None:
        case.setup(directory, host.user)
    return directory


def run(case: Case, host: Host, directory: Path) -> subprocess.CompletedProcess[str]:
    fill = {"dir": str(directory), "user": host.user.name}
    command = [CONSOLE, *(arg.format(**fill) for arg in case.args)]
    if case.as_user:
        need(shutil.which("runuser") is not None, "needs runuser (Debian package util-linux)")
        command = ["runuser", "-u", host.user.name, "--", *command]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update({name: value.format(**fill) for name, value in case.env.items()})
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd="/")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_an_exit_status(case: Case, host: Host) -> None:
    need(os.geteuid() == 0, "needs root: the cases use a real user and root-owned files")
    result = run(case, host, prepare(case, host))
    if case.stdout:  # check-config reports a skipped usermap line on stdout, by design
        lines = [line for line in result.stdout.splitlines() if case.stdout in line]
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
    seen = f"exit {result.returncode}, stderr {result.stderr!r}, stdout {result.stdout[-300:]!r}"
    assert "Traceback" not in result.stderr + result.stdout, seen
    assert result.returncode == case.code, seen
    assert len(lines) == 1, seen
    assert case.names in lines[0], seen
