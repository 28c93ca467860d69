"""What is served: a validated config and the users its usermap resolves to.

The one loader used by both the CLI and the daemon, so both refuse, skip and log the
same things.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from t3backupd.core.config import Config, load_config
from t3backupd.core.errors import ConfigError
from t3backupd.core.offsite_config import credential_problem, secret_file_problems
from t3backupd.core.usermap import NOT_ROOT_REASON, Problem, User, load_users
from t3backupd.root.log import get_logger
from t3backupd.root.spawn import running_as_root
from t3backupd.root.trusted import UntrustedFile, read_trusted, read_trusted_file, resolve_trusted


@dataclass(frozen=True)
class Served:
    """A validated config and the users its usermap resolves to. Never mutated."""

    config: Config
    users: tuple[User, ...]
    problems: tuple[Problem, ...]


def load_served(path: Path) -> Served:
    """Read config and usermap. Raises ConfigError if the config is invalid or unreadable,
    or if the usermap is missing or unreadable: for every command and for the daemon (at
    start; a reload keeps the old one). The legacy script backed up nobody and exited 0
    then (issue 21): a typo in `usermap` must never look like a green run."""
    modes: list[int] = []
    config = load_config(path, reader=lambda where: _read_config(where, modes))
    if config.offsite is not None and modes:
        problem = credential_problem(config.offsite, modes[0])
        if problem is not None:
            raise ConfigError(str(path), [problem])
    for key, tls_path in (("metrics.tls_cert", config.metrics.tls_cert),
                          ("metrics.tls_key", config.metrics.tls_key)):  # fmt: skip
        if tls_path:
            try:
                resolve_trusted(tls_path)
            except UntrustedFile as error:
                raise ConfigError(str(path), [f"{key}: {error}"]) from None
            except OSError as error:
                raise ConfigError(str(path), [f"{key}: {tls_path}: {error.strerror}"]) from None
    own_uid = None if running_as_root() else os.geteuid()
    try:
        users, problems = load_users(
            config.usermap, config.min_uid, own_uid, max_uid=config.max_uid, reader=_read_usermap
        )
    except UntrustedFile as error:
        # Never "optional": a usermap someone else could write is an attack, not absence.
        raise ConfigError(config.usermap, [f"usermap refused: {error}"]) from None
    except OSError as error:
        reason = f"usermap unreadable: {error.strerror or error}"
        raise ConfigError(config.usermap, [reason]) from None
    return Served(config, tuple(users), tuple(problems))


def _read_config(path: Path, modes: list[int]) -> bytes:
    """The config file's bytes, if root's alone (see root/trusted.py): ConfigError if not.
    Its mode is appended to `modes` (who else can read a credential in it)."""
    try:
        data, info = read_trusted_file(str(path.absolute()))
    except UntrustedFile as error:
        raise ConfigError(str(path), [f"refused: {error}"]) from None
    modes.append(info.st_mode)
    return data


def require_offsite_secrets(config: Config) -> None:
    """Refuse (ConfigError) offsite secret files that are not this process's alone: for
    what uses them (the daemon at start and on reload, the `offsite` commands). Never
    called by a command that does not use offsite: a user's `list` must not need root's
    password file."""
    if config.offsite is None:
        return
    problems = secret_file_problems(config.offsite, None if running_as_root() else os.geteuid())
    if problems:
        raise ConfigError(config.path, problems)


def _read_usermap(path: str) -> str:
    return read_trusted(path).decode("utf-8", errors="replace")


def log_problems(served: Served) -> None:
    """One log line per skipped usermap line."""
    log = get_logger()
    for problem in served.problems:
        # Run by a user for themselves, the other users' lines are expected: debug only.
        (log.debug if problem.reason == NOT_ROOT_REASON else log.warning)(
            "usermap entry skipped",
            usermap=served.config.usermap,
            line=problem.line,
            name=problem.name,
            reason=problem.reason,
        )


def nobody_served(config: Config, users: Sequence[User]) -> str | None:
    """The one warning for a usermap that was read but serves no user (empty, only
    comments, every line skipped; run by a user, none of its lines theirs), else None."""
    if users:
        return None
    usermap = config.usermap
    if running_as_root():
        return f"usermap {usermap} serves no user (empty, only comments, or every line skipped)"
    return f"usermap {usermap} serves no user: {own_name()} is not in it (or run as root)"


def verify_shadowed(config: Config) -> str | None:
    """The warning for a `[verify] cron` equal to `schedule.cron`, else None: both jobs
    fire at the same moment, the snapshot pass takes the pass lock first, and every
    verify pass is skipped (it never waits, so as not to delay the next snapshot)."""
    cron = " ".join(config.verify.cron.split())
    if not cron or cron != " ".join(config.schedule.cron.split()):
        return None
    return (
        f"verify.cron '{config.verify.cron}' is schedule.cron: each verify pass starts "
        "while the snapshot pass runs and is skipped, so nothing is ever verified; give "
        "verify.cron another time"
    )


def own_name() -> str:
    """The login name of the effective uid (the uid itself if it has none)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
