"""The `[offsite]` config section (pure parsing) and the check of its secret files.

Self-contained so the main parser only hands it the table: `parse_offsite` records every
problem in the caller's list; `secret_file_problems` is the one part that looks at the
filesystem (owner and mode of `password_file` / `environment_file` / `repository_file`),
called only where the secrets are used (the daemon at start, `offsite` commands,
`check-config`): never by a command that does not use offsite, so a user's own `list`
works with a root-only password file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from t3backupd.core.cron import CronError, parse_crontab

COMPRESSIONS = ("auto", "max", "off")
# borg init --encryption: encrypted and authenticated, or authenticated only (restic
# always encrypts; it has no such key).
BORG_ENCRYPTIONS = ("repokey-blake2", "repokey", "authenticated", "authenticated-blake2")
BORG_CACHE_DIR = "/var/cache/t3backupd/borg"
_SSH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*=[^\s]+")
_BACKEND_OPTION = re.compile(r"[a-z0-9]+\.[a-z0-9.-]+=.*")
_BORG_SSH_URL = re.compile(r"ssh://(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(?::\d{1,5})?/.+")
_RESTIC_SCHEMES = ("sftp", "rest", "s3", "rclone", "b2", "azure", "gs", "swift")
_SUBSET = re.compile(r"(\d+)/(\d+)|(\d{1,3}(?:\.\d+)?)%|(\d+[KMGT]?)")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Variables an engine takes its secret, repository or directories from (see
# EngineRules.reserved_environment).
RESTIC_ENVIRONMENT = (
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_CACHE_DIR",
)
BORG_ENVIRONMENT = (
    "BORG_PASSPHRASE",
    "BORG_PASSCOMMAND",
    "BORG_PASSPHRASE_FD",
    "BORG_NEW_PASSPHRASE",
    "BORG_REPO",
    "BORG_RSH",
    "BORG_BASE_DIR",
    "BORG_CACHE_DIR",
    "BORG_CONFIG_DIR",
    "BORG_SECURITY_DIR",
    "BORG_KEYS_DIR",
    "BORG_KEY_FILE",
    "BORG_RELOCATED_REPO_ACCESS_IS_OK",
    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK",
    "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING",
    "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING",
)


def _printable_url(repository: str) -> bool:
    return not any(ch.isspace() or not ch.isprintable() for ch in repository)


def _restic_repository_ok(repository: str) -> bool:
    scheme, sep, rest = repository.partition(":")
    return _printable_url(repository) and (
        repository.startswith("/") or (bool(sep and rest) and scheme in _RESTIC_SCHEMES)
    )


def _borg_repository_ok(repository: str) -> bool:
    return (
        _printable_url(repository)
        and "::" not in repository
        and (repository.startswith("/") or _BORG_SSH_URL.fullmatch(repository) is not None)
    )


@dataclass(frozen=True)
class EngineRules:
    """What `[offsite]` means for one engine: its row of rules. The engine's binary is
    the key named after it (`offsite.restic`, `offsite.borg`)."""

    cache_dir: str  # offsite.cache_dir when the file sets none
    # Keys that mean something for this engine only: set for another engine, they are
    # refused (a silently ignored key would be a surprise).
    own_keys: tuple[str, ...]
    repository_ok: Callable[[str], bool]
    repository_hint: str  # what `repository_ok` accepts, for the message
    option_pattern: re.Pattern[str]  # one item of offsite.options
    options_hint: str
    # Variables the engine takes its secret, repository or directories from: set by
    # t3backupd alone, never from the environment file.
    reserved_environment: tuple[str, ...]
    # Whether check_read_data_subset may be a size ("500M"), not only a share.
    subset_size_ok: bool = True
    version_args: tuple[str, ...] = ("--version",)  # how check-config asks its version


ENGINE_RULES: dict[str, EngineRules] = {
    "restic": EngineRules(
        cache_dir="/var/cache/t3backupd/restic",
        own_keys=("restic", "compression", "repository_file"),
        repository_ok=_restic_repository_ok,
        repository_hint=(
            "expected /path, sftp:..., rest:..., s3:..., rclone:..., b2:..., azure:..., "
            "gs:... or swift:..."
        ),
        option_pattern=_BACKEND_OPTION,
        options_hint='expected "backend.option=value" strings',
        reserved_environment=RESTIC_ENVIRONMENT,
        version_args=("version",),
    ),
    # borg URLs (ssh://user@host/path) carry no password: borg authenticates by ssh key.
    "borg": EngineRules(
        cache_dir=BORG_CACHE_DIR,
        own_keys=("borg", "encryption"),
        repository_ok=_borg_repository_ok,
        repository_hint="expected /path or ssh://user@host[:port]/path for engine borg",
        option_pattern=_SSH_OPTION,
        options_hint='expected ssh "Key=Value" options for engine borg (e.g. "Port=2222")',
        reserved_environment=BORG_ENVIRONMENT,
        subset_size_ok=False,
    ),
}
ENGINES = tuple(ENGINE_RULES)
# Keys with a fixed set of values (whichever engine is chosen: a typo is refused anyway).
CHOICES = {"compression": COMPRESSIONS, "encryption": BORG_ENCRYPTIONS}
# Never from the environment file: the password comes from password_file only, the
# repository from `repository`, the directories from t3backupd.
RESERVED_ENV = tuple(name for rules in ENGINE_RULES.values() for name in rules.reserved_environment)
MAX_SECRET_FILE_BYTES = 1 << 16


# Root's ledger of published snapshots (root/ledger.py), with or without [offsite].
DEFAULT_LEDGER_DIR = "/var/lib/t3backupd/published"


@dataclass(frozen=True)
class OffsiteConfig:
    """`[offsite]`: where and how snapshots leave the machine (absent = off)."""

    repository: str = ""
    password_file: str = ""
    environment_file: str = ""
    # restic: a root-only file holding the repository URL, for URLs with a password in
    # them (rest:https://user:pass@host/); exactly one of repository and repository_file.
    repository_file: str = ""
    engine: str = "restic"
    restic: str = "restic"
    borg: str = "borg"  # engine "borg": the binary
    encryption: str = "repokey-blake2"  # engine "borg": borg init --encryption
    host: str = ""  # restic --host of this machine's snapshots; "" = the hostname
    cache_dir: str = "/var/cache/t3backupd/restic"
    timeout_seconds: int = 3600
    # A user's stream (worker start included) that sends no byte for this long ends as
    # `timeout`, and with it that user's turn in the pass: a frozen worker costs the
    # lane this, not timeout_seconds per pending copy.
    stall_seconds: int = 60
    # The most of a pass one user's streams may take (0 = timeout_seconds); the rest of
    # their pending copies wait for the next pass.
    user_turn_seconds: int = 0
    concurrency: int = 1
    limit_upload_kib: int = 0  # 0 = unlimited
    compression: str = "auto"
    # Deduplicated history is cheap: a week of dailies, two months of weeklies, a year
    # of monthlies, and always the newest 3 whatever their age.
    keep_last: int = 3
    keep_hourly: int = 0  # for an hourly schedule, e.g. 48 (see docs/operations.md)
    keep_daily: int = 7
    keep_weekly: int = 8
    keep_monthly: int = 12
    prune_cron: str = "15 5 * * 0"  # forget + prune weekly (Sunday 05:15)
    check_cron: str = "45 5 * * 0"  # restic check + restore drill weekly
    check_read_data_subset: str = "1/7"
    # Root's ledger of the snapshots it published (root/ledger.py): only those go offsite.
    ledger_dir: str = DEFAULT_LEDGER_DIR
    # Per user, copies in the repository (labelled included) past which nothing more is
    # uploaded for them (reason `quota`); 0 = no bound.
    max_copies_per_user: int = 100
    max_bytes_per_user: int = 20 * 1024**3  # 20 GiB of snapshot bytes (before dedup)
    # restic: --option KEY=VALUE (e.g. sftp.command=...); borg: ssh -o Key=Value options
    # for BORG_RSH (e.g. UserKnownHostsFile=..., IdentityFile=...).
    options: tuple[str, ...] = ()


# Every key `[offsite]` accepts (the dataclass's fields): the one list the parser checks
# against and the docs are tested against.
OFFSITE_KEYS: tuple[str, ...] = tuple(item.name for item in fields(OffsiteConfig))


def parse_offsite(
    table: Mapping[str, Any], problems: list[str], origins: dict[str, str] | None = None
) -> OffsiteConfig:
    """Validate the `[offsite]` table; every problem is appended as "offsite.KEY: ...",
    and each key's origin ("file" or "default") is put in `origins`."""
    values = _typed_values(table, problems, origins)
    rules = ENGINE_RULES.get(values["engine"])
    if rules is not None and "cache_dir" not in table:
        values["cache_dir"] = rules.cache_dir
    config = OffsiteConfig(**values)

    def check(name: str, ok: bool, message: str) -> None:
        if not ok:
            problems.append(f"offsite.{name}: {message}")

    # Unknown: one line naming the key, and no other engine's rules applied to it.
    check("engine", rules is not None, f"must be one of {ENGINES}")
    _check_repository(config, rules, check)
    if rules is not None:
        _check_engine_rules(config, table, rules, check)
    _check_common(config, check)
    return config


Check = Callable[[str, bool, str], None]


def _typed_values(
    table: Mapping[str, Any], problems: list[str], origins: dict[str, str] | None
) -> dict[str, Any]:
    """Each key's value from `table` when it has the default's type, else the default
    (the problem recorded); unknown keys recorded."""
    defaults = OffsiteConfig()
    values: dict[str, Any] = {}
    for name in OFFSITE_KEYS:
        default = getattr(defaults, name)
        if origins is not None:
            origins[f"offsite.{name}"] = "file" if name in table else "default"
        values[name] = default
        if name not in table:
            continue
        value = table[name]
        if name == "options":
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                values[name] = tuple(value)
            else:
                problems.append(f"offsite.{name}: expected a list of strings")
            continue
        kind = type(default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"offsite.{name}: expected {kind.__name__}, got {type(value).__name__}")
        else:
            values[name] = value
    for unknown in sorted(set(table) - set(OFFSITE_KEYS)):
        problems.append(f"offsite.{unknown}: unknown key")
    return values


def _check_repository(config: OffsiteConfig, rules: EngineRules | None, check: Check) -> None:
    """`repository`, or (for an engine that owns the key) `repository_file`."""
    by_file = rules is not None and "repository_file" in rules.own_keys
    if not by_file or not config.repository_file:
        check(
            "repository",
            bool(config.repository.strip()),
            f"required (a {config.engine} repository)",
        )
    else:
        check("repository_file", config.repository_file.startswith("/"), "must be an absolute path")
        check("repository", not config.repository, "set repository or repository_file, not both")
    if rules is not None and config.repository:
        check("repository", rules.repository_ok(config.repository), rules.repository_hint)


def _check_engine_rules(
    config: OffsiteConfig, table: Mapping[str, Any], rules: EngineRules, check: Check
) -> None:
    """The chosen engine's row: other engines' own keys, options, the check subset."""
    for row in ENGINE_RULES.values():
        for key in row.own_keys:
            if key not in rules.own_keys and key in table:
                check(key, False, f"means nothing for engine {config.engine!r}; remove it")
    check(
        "options",
        all(rules.option_pattern.fullmatch(item) for item in config.options),
        rules.options_hint,
    )
    subset = config.check_read_data_subset
    check(
        "check_read_data_subset",
        rules.subset_size_ok or not _subset_ok(subset) or subset_fraction(subset) is not None,
        f'expected "n/t" or "P%" for engine {config.engine} (a size means nothing to '
        f"{config.engine} check)",
    )


def _check_common(config: OffsiteConfig, check: Check) -> None:
    """The rules every engine shares."""
    check("password_file", config.password_file.startswith("/"), "required, an absolute path")
    check(
        "environment_file",
        not config.environment_file or config.environment_file.startswith("/"),
        "must be an absolute path",
    )
    for engine in ENGINES:
        check(engine, bool(getattr(config, engine)), f"must name the {engine} binary")
    for name, choices in CHOICES.items():
        check(name, getattr(config, name) in choices, f"must be one of {choices}")
    check("host", not config.host or _HOST.fullmatch(config.host) is not None, "invalid host name")
    check("cache_dir", config.cache_dir.startswith("/"), "must be an absolute path")
    check("ledger_dir", config.ledger_dir.startswith("/"), "must be an absolute path")
    for name in ("max_copies_per_user", "max_bytes_per_user"):
        check(name, getattr(config, name) >= 0, "must be >= 0 (0 = no bound)")
    check("timeout_seconds", 1 <= config.timeout_seconds <= 7 * 86400, "must be 1-604800")
    check("stall_seconds", 1 <= config.stall_seconds <= 86400, "must be 1-86400")
    check(
        "user_turn_seconds",
        0 <= config.user_turn_seconds <= 7 * 86400,
        "must be 0-604800 (0 = timeout_seconds)",
    )
    check("concurrency", 1 <= config.concurrency <= 16, "must be 1-16")
    check("limit_upload_kib", config.limit_upload_kib >= 0, "must be >= 0 (0 = unlimited)")
    for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly"):
        check(name, getattr(config, name) >= 0, "must be >= 0")
    check(
        "keep_last",
        any(
            getattr(config, name)
            for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly")
        ),
        "keep_last, keep_hourly, keep_daily or keep_weekly must keep something",
    )
    for name in ("prune_cron", "check_cron"):
        text = getattr(config, name)
        if text:
            try:
                parse_crontab(text)
            except CronError as error:
                check(name, False, str(error))
    check(
        "check_read_data_subset",
        _subset_ok(config.check_read_data_subset),
        'expected "n/t" (1 <= n <= t), "P%" or a size such as "500M"',
    )


# user:password@ in a URL (rest:https://u:p@host/, sftp://u:p@host/...): a credential.
_USERINFO_PASSWORD = re.compile(r"//[^/@\s]*:[^/@\s]*@")


def has_credential(repository: str) -> bool:
    """Whether a repository URL carries a password (user:password@)."""
    return _USERINFO_PASSWORD.search(repository) is not None


def credential_problem(config: OffsiteConfig, config_mode: int) -> str | None:
    """The one line refusing a repository URL with a password in a config file that
    group or others can read (the .deb installs it 0644, readable by every user)."""
    if not has_credential(config.repository) or not config_mode & 0o044:
        return None
    return (
        f"offsite.repository: has a password in it and the config file is mode "
        f"{stat.S_IMODE(config_mode):04o}, readable by others; put the URL in a root-only "
        "(0600) file named by offsite.repository_file instead"
    )


def subset_fraction(text: str) -> float | None:
    """The share of the data `check_read_data_subset` names ("n/t", "P%"), or None for a
    size ("500M") or an invalid text."""
    match = _SUBSET.fullmatch(text)
    if match is None:
        return None
    if match.group(1) is not None:
        return int(match.group(1)) / int(match.group(2)) if int(match.group(2)) else None
    if match.group(3) is not None:
        return float(match.group(3)) / 100
    return None


def _subset_ok(text: str) -> bool:
    match = _SUBSET.fullmatch(text)
    if match is None:
        return False
    if match.group(1) is not None:
        return 1 <= int(match.group(1)) <= int(match.group(2))
    if match.group(3) is not None:
        return 0 < float(match.group(3)) <= 100
    return True


def secret_file_problems(config: OffsiteConfig, owner_uid: int | None = None) -> list[str]:
    """Problems with the password, environment and repository files: each must be a regular file
    (not a link), owned by root (or by `owner_uid`, the daemon's uid when not root) and
    not readable or writable by group or others; the environment file must be KEY=VALUE
    lines. Reads only root's own files (the operator's, in /etc)."""
    owner = 0 if owner_uid is None else owner_uid
    problems: list[str] = []
    for key in ("password_file", "environment_file", "repository_file"):
        path = getattr(config, key)
        if not path:
            continue
        try:
            data = read_secret_file(path, owner)
        except SecretFileError as error:
            problems.append(f"offsite.{key}: {path}: {error}")
            continue
        if key in ("password_file", "repository_file") and not data.strip():
            problems.append(f"offsite.{key}: {path}: is empty")
        if key == "environment_file":
            try:
                parse_environment(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as error:
                problems.append(f"offsite.{key}: {path}: {error}")
    return problems


class SecretFileError(Exception):
    """A password or credentials file that must not be used."""


def read_secret_file(path: str, owner: int) -> bytes:
    """The contents of a root-only file. Raises SecretFileError saying what is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SecretFileError("does not exist") from None
    except OSError as error:
        raise SecretFileError(f"cannot open ({error.strerror}; a symlink is refused)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError("is not a regular file")
        if info.st_uid != owner:
            raise SecretFileError(f"is owned by uid {info.st_uid}, must be owned by uid {owner}")
        if info.st_mode & 0o077:
            raise SecretFileError(
                f"mode {stat.S_IMODE(info.st_mode):04o} lets group or others in; chmod 0600 it"
            )
        data = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretFileError("is larger than 64 KiB")
    return data


def parse_environment(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments allowed). Raises ValueError naming the
    line number (never the value: it is a secret)."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        if not sep or _ENV_KEY.fullmatch(key) is None:
            raise ValueError(f"line {number}: expected KEY=VALUE")
        if key in RESERVED_ENV:
            raise ValueError(
                f"line {number}: {key} is not allowed here (password_file and repository say that)"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        result[key] = value
    return result
