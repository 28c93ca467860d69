"""What `check-config` shows of `[offsite]`: each key with its value and origin, the
engine binary and its version, the secret files' owner and mode, the next prune and
check, and the warnings (`--strict` fails on them).

The secret files are looked at (lstat), and checked the way the daemon checks them
(`secret_file_problems`) only when they are this process's to read: root's as root, or
the invoking user's own. Run by a user, root's secrets are shown, not opened.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from datetime import datetime

from t3backupd.core.config import Config
from t3backupd.core.offsite_config import ENGINE_RULES, OffsiteConfig, secret_file_problems
from t3backupd.root.offsite.engine import OffsiteError
from t3backupd.root.offsite.process import BASE_ENVIRONMENT, start_engine
from t3backupd.root.trusted import directory_problem

VERSION_TIMEOUT_SECONDS = 10.0
SECRET_KEYS = ("password_file", "repository_file", "environment_file")


def key_lines(config: Config, offsite: OffsiteConfig) -> list[str]:
    """`offsite.KEY = value  (origin)` for every `[offsite]` key."""
    origins = dict(config.origins)
    names = list(OffsiteConfig.__dataclass_fields__)
    width = max(len(f"offsite.{name}") for name in names)
    lines = []
    for name in names:
        value = getattr(offsite, name)
        shown = '"' + value + '"' if isinstance(value, str) else repr(value)
        key = f"offsite.{name}"
        lines.append(f"{key:<{width}} = {shown}  ({origins.get(key, 'default')})")
    return lines


def binary(offsite: OffsiteConfig) -> tuple[str, str | None]:
    """(line, warning) for the engine binary: where it is and its version."""
    name = getattr(offsite, offsite.engine)  # the key named after the engine
    path = shutil.which(name, path=BASE_ENVIRONMENT["PATH"])
    if path is None:
        return (
            f"engine {offsite.engine}: {name} not found",
            f"offsite.{offsite.engine}: {name} not found; offsite copies will fail",
        )
    version = [path, *ENGINE_RULES[offsite.engine].version_args]
    try:
        process = start_engine(
            version, BASE_ENVIRONMENT, None, signal.SIGTERM, None, True, name, "-"
        )
    except OffsiteError as error:
        return f"engine {offsite.engine}: {path}", f"offsite.{offsite.engine}: {error.message}"
    status = process.wait(VERSION_TIMEOUT_SECONDS)
    lines = process.stdout.decode("utf-8", "replace").strip().splitlines()
    if status != 0 or not lines:
        return (
            f"engine {offsite.engine}: {path}",
            f"offsite.{offsite.engine}: {path} did not tell its version (exit {status})",
        )
    return f"engine {offsite.engine}: {path} ({lines[0][:120]})", None


def secret_lines(offsite: OffsiteConfig) -> list[str]:
    """One line per configured secret file: its owner and mode (lstat: never opened)."""
    lines = []
    for key in SECRET_KEYS:
        path = getattr(offsite, key)
        if not path:
            continue
        try:
            info = os.lstat(path)
        except OSError as error:
            lines.append(f"offsite.{key} {path}: {error.strerror}")
            continue
        kind = "link" if stat.S_ISLNK(info.st_mode) else "file"
        lines.append(
            f"offsite.{key} {path}: {kind}, owner uid {info.st_uid}, "
            f"mode {stat.S_IMODE(info.st_mode):04o}"
        )
    return lines


def secret_warnings(offsite: OffsiteConfig) -> list[str]:
    """The daemon's own refusal of the secret files, when this process is the one that
    would use them (root, or a user whose own files they are); else nothing: a user's
    check-config does not open root's secrets."""
    if os.geteuid() == 0:
        return secret_file_problems(offsite)
    mine = [
        getattr(offsite, key)
        for key in SECRET_KEYS
        if getattr(offsite, key) and _owner(getattr(offsite, key)) == os.geteuid()
    ]
    return secret_file_problems(offsite, os.geteuid()) if mine else []


def _owner(path: str) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def cache_warning(offsite: OffsiteConfig) -> str | None:
    problem = directory_problem(offsite.cache_dir)
    if problem is None:
        return None
    return f"offsite.cache_dir {offsite.cache_dir} is refused: {problem}"


def next_runs(config: Config, offsite: OffsiteConfig, now: datetime) -> list[str]:
    """The next prune and check, as the daemon schedules them."""
    from t3backupd.root.scheduler import build_trigger, next_run_times

    zone = config.schedule.timezone
    lines = []
    for what, cron in (("prune", offsite.prune_cron), ("check", offsite.check_cron)):
        if not cron:
            lines.append(f"offsite {what}: off (offsite.{what}_cron is empty)")
            continue
        (when,) = next_run_times(build_trigger(cron, zone), now, 1)
        lines.append(f"offsite {what} '{cron}' ({zone}), next: {when.isoformat()}")
    return lines


def offsite_report(config: Config, now: datetime) -> tuple[list[str], list[str]]:
    """(lines, warnings) of `[offsite]` for check-config; nothing when it is off."""
    offsite = config.offsite
    if offsite is None:
        return ["offsite: off (no [offsite] section)"], []
    lines = [f"offsite ({offsite.engine}):", *(f"  {line}" for line in key_lines(config, offsite))]
    line, warning = binary(offsite)
    lines.append(line)
    warnings = [warning] if warning is not None else []
    lines += secret_lines(offsite)
    warnings += secret_warnings(offsite)
    if (cache := cache_warning(offsite)) is not None:
        warnings.append(cache)
    lines += next_runs(config, offsite, now)
    return lines, warnings
