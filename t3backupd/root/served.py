"""What is served: a validated config and the users its usermap resolves to.

The one loader used by both the CLI and the daemon, so both refuse, skip and log the
same things.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from t3backupd.core.config import Config, load_config
from t3backupd.core.errors import ConfigError
from t3backupd.core.usermap import NOT_ROOT_REASON, Problem, User, load_users
from t3backupd.root.log import get_logger
from t3backupd.root.spawn import running_as_root
from t3backupd.root.trusted import UntrustedFile, read_trusted, resolve_trusted


@dataclass(frozen=True)
class Served:
    """A validated config and the users its usermap resolves to. Never mutated."""

    config: Config
    users: tuple[User, ...]
    problems: tuple[Problem, ...]
    usermap_error: str = ""  # why the usermap could not be read ("" = it was read)


def load_served(path: Path, *, usermap_optional: bool = False) -> Served:
    """Read config and usermap. Raises ConfigError if the config is invalid or unreadable,
    and if the usermap is unreadable unless `usermap_optional` (then zero users, and
    `usermap_error` says why: the legacy script backed up nobody and said so)."""
    config = load_config(path, reader=_read_config)
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
        if not usermap_optional:
            raise ConfigError(config.usermap, [reason]) from None
        return Served(config, (), (), usermap_error=f"{config.usermap}: {reason}")
    return Served(config, tuple(users), tuple(problems))


def _read_config(path: Path) -> bytes:
    """The config file's bytes, if root's alone (see root/trusted.py): ConfigError if not."""
    try:
        return read_trusted(str(path.absolute()))
    except UntrustedFile as error:
        raise ConfigError(str(path), [f"refused: {error}"]) from None


def _read_usermap(path: str) -> str:
    return read_trusted(path).decode("utf-8", errors="replace")


def log_problems(served: Served) -> None:
    """One log line per skipped usermap line, and one if the usermap was unreadable."""
    log = get_logger()
    if served.usermap_error:
        log.error("usermap unreadable", usermap=served.config.usermap, error=served.usermap_error)
    for problem in served.problems:
        # Run by a user for themselves, the other users' lines are expected: debug only.
        (log.debug if problem.reason == NOT_ROOT_REASON else log.warning)(
            "usermap entry skipped",
            usermap=served.config.usermap,
            line=problem.line,
            name=problem.name,
            reason=problem.reason,
        )
