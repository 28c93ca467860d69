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
    config = load_config(path)
    own_uid = None if running_as_root() else os.geteuid()
    try:
        users, problems = load_users(config.usermap, config.min_uid, own_uid)
    except OSError as error:
        reason = f"usermap unreadable: {error.strerror or error}"
        if not usermap_optional:
            raise ConfigError(config.usermap, [reason]) from None
        return Served(config, (), (), usermap_error=f"{config.usermap}: {reason}")
    return Served(config, tuple(users), tuple(problems))


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
