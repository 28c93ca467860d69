"""Config: TOML file + the legacy environment overrides -> one immutable `Config`.

`parse_config` is pure (a dict in, a value out) and reports every problem at once;
`load_config` reads the file. Reload builds a new value and swaps it in.
"""

from __future__ import annotations

import ipaddress
import os
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from t3backupd.core.cron import CronError, parse_crontab
from t3backupd.core.errors import ConfigError
from t3backupd.core.offsite_config import OffsiteConfig, parse_offsite
from t3backupd.core.protocol import (
    METHODS,
    SCHEMA_SOURCES,
    VERIFY_MODES,
    Method,
    SchemaSource,
    VerifyMode,
)
from t3backupd.core.retention import RetentionPolicy
from t3backupd.core.usermap import system_uid_max

DEFAULT_CONFIG_PATH = Path("/etc/t3backupd/config.toml")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ScheduleConfig:
    cron: str = "30 3 * * *"
    timezone: str = "UTC"
    jitter_seconds: int = 0
    catch_up: bool = True
    misfire_grace_seconds: int = 3600


@dataclass(frozen=True)
class SnapshotConfig:
    method: Method = "backup"
    timeout_seconds: int = 900
    verify: VerifyMode = "quick"
    concurrency: int = 1
    min_free_bytes: int = 0
    schema_version: SchemaSource = "auto"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9745"
    tls_cert: str = ""
    tls_key: str = ""

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when metrics are disabled."""
        return parse_listen(self.listen) if self.listen else None


@dataclass(frozen=True)
class LogConfig:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class VerifyConfig:
    cron: str = ""  # "" = no scheduled verification


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration. Never mutated; reload makes a new one."""

    path: str = str(DEFAULT_CONFIG_PATH)
    usermap: str = "/etc/ttyd-user-map"
    dest: str = "/var/backups/t3-state"
    source: str = "{home}/.t3/userdata/state.sqlite"
    min_uid: int = 1000
    # Default: UID_MAX of /etc/login.defs (so `nobody`, 65534, is never served).
    max_uid: int = field(default_factory=system_uid_max)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    # Where each key's value came from ("default", "file", "environment T3_BACKUP_KEEP"),
    # for `check-config`; not part of what the config *is*.
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    offsite: OffsiteConfig | None = None  # [offsite] (core/offsite_config.py); None = off

    def source_for(self, user: str, home: str) -> str:
        """The source database path of one user (from the passwd database)."""
        return self.source.format(user=user, home=home.rstrip("/") or "/")


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port". Raises ValueError if malformed."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host {host!r} is not an IP address or localhost") from None
    return host, port


# --- the field table: one row per key, defaults from the dataclasses ---------------


def _one_of(choices: Sequence[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(map(repr, choices))

    return check


def _between(low: int, high: int | None, why: str = "") -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value >= low and (high is None or value <= high):
            return None
        text = f"must be >= {low}" if high is None else f"must be {low}-{high}"
        return f"{text}{why}"

    return check


def _absolute(value: Any) -> str | None:
    return None if str(value).startswith("/") else "must be an absolute path"


def _cron(value: Any) -> str | None:
    try:
        parse_crontab(value)
    except CronError as error:
        return str(error)
    return None


def _optional_cron(value: Any) -> str | None:
    return _cron(value) if value else None


def _listen(value: Any) -> str | None:
    if not value:
        return None
    try:
        parse_listen(value)
    except ValueError as error:
        return f"{value!r}: {error}"
    return None


def _check_source_template(template: str) -> str | None:
    allowed = "bad placeholder; only {home} and {user} are allowed"
    try:
        # Only bare {home} / {user}: str.format would otherwise also accept attribute
        # access, indexing, conversions and format specs ("{home.x}" raises AttributeError).
        for _, field_name, format_spec, conversion in string.Formatter().parse(template):
            if field_name is not None and (
                field_name not in ("home", "user") or format_spec or conversion
            ):
                return f"{allowed} (found {{{field_name}}})"
        sample = template.format(user="u", home="/home/u")
    except (KeyError, IndexError, ValueError) as error:
        return f"bad placeholder ({error}); only {{home}} and {{user}} are allowed"
    if not sample.startswith("/"):
        return "must be an absolute path (after {home}/{user} substitution)"
    return None


def _check_timezone(name: str) -> str | None:
    if name == "local":
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (IANA name or 'local')"
    return None


def _no_check(value: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Key:
    """One config key: its TOML type, its check, and the legacy environment override."""

    name: str
    kind: type
    check: Callable[[Any], str | None] = _no_check
    env: str | None = None


@dataclass(frozen=True)
class Section:
    """One TOML table ("" = the top level) and the dataclass its keys fill."""

    name: str
    target: type
    keys: tuple[Key, ...]


SECTIONS: tuple[Section, ...] = (
    Section("", Config, (
        Key("usermap", str, _absolute),
        Key("dest", str, _absolute, env="T3_BACKUP_DEST"),
        Key("source", str, _check_source_template),
        Key("min_uid", int, _between(1, None, " (root is never served)")),
        Key("max_uid", int, _between(1, None)),
    )),
    Section("schedule", ScheduleConfig, (
        Key("cron", str, _cron),
        Key("timezone", str, _check_timezone),
        Key("jitter_seconds", int, _between(0, 86400)),
        Key("catch_up", bool),
        Key("misfire_grace_seconds", int, _between(1, 31 * 86400, " (31 days)")),
    )),
    Section("snapshot", SnapshotConfig, (
        Key("method", str, _one_of(METHODS)),
        Key("timeout_seconds", int, _between(1, None), env="T3_BACKUP_TIMEOUT"),
        Key("verify", str, _one_of(VERIFY_MODES)),
        Key("concurrency", int, _between(1, 64)),
        Key("min_free_bytes", int, _between(0, None)),
        Key("schema_version", str, _one_of(SCHEMA_SOURCES)),
    )),
    Section("retention", RetentionPolicy, (
        Key("keep", int, _between(1, None), env="T3_BACKUP_KEEP"),
        Key("keep_hourly", int, _between(0, None)),
        Key("keep_daily", int, _between(0, None)),
        Key("keep_weekly", int, _between(0, None)),
        Key("keep_monthly", int, _between(0, None)),
        Key("keep_schema_guards", int, _between(1, 100)),
    )),
    Section("metrics", MetricsConfig, (
        Key("listen", str, _listen),
        Key("tls_cert", str),
        Key("tls_key", str),
    )),
    Section("log", LogConfig, (
        Key("format", str, _one_of(LOG_FORMATS)),
        Key("level", str, _one_of(LOG_LEVELS)),
    )),
    Section("verify", VerifyConfig, (
        Key("cron", str, _optional_cron),
    )),
)  # fmt: skip


def all_keys() -> list[str]:
    """Every key the parser accepts, dotted ("snapshot.method")."""
    return [
        f"{section.name}.{key.name}".lstrip(".") for section in SECTIONS for key in section.keys
    ]


def _defaults(target: type) -> dict[str, Any]:
    """The dataclass's own defaults: the one place a default is written down."""
    values: dict[str, Any] = {}
    for item in fields(target):
        if item.default is not MISSING:
            values[item.name] = item.default
        elif item.default_factory is not MISSING:
            values[item.name] = item.default_factory()
    return values


def _type_problem(value: Any, kind: type) -> str | None:
    # bool is an int subclass in Python; TOML keeps them apart, so do we.
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return None
    return f"expected {kind.__name__}, got {type(value).__name__}"


def _from_environment(text: str, kind: type) -> Any:
    """The value of an override; raises ValueError if it is not of the key's kind."""
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("not an integer") from None
    return text


def _read_section(
    section: Section,
    table: Mapping[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
    origins: dict[str, str],
) -> dict[str, Any]:
    """The section's values (defaults, then the file, then the environment), checked."""
    values = _defaults(section.target)
    prefix = f"{section.name}." if section.name else ""
    for key in section.keys:
        dotted = prefix + key.name
        origin = "default"
        if key.name in table:
            value = table[key.name]
            if (problem := _type_problem(value, key.kind)) is not None:
                problems.append(f"{dotted}: {problem}")
                continue
            values[key.name], origin = value, "file"
        override = environ.get(key.env) if key.env else None
        where = dotted
        if key.env and override:
            where = f"environment {key.env}={override!r}"
            try:
                values[key.name] = _from_environment(override, key.kind)
            except ValueError as error:
                problems.append(f"{where}: {error}")
                continue
            origin = f"environment {key.env}"
            where = f"{where} ({dotted})"
        if (problem := key.check(values[key.name])) is not None:
            problems.append(f"{where}: {problem}")
        origins[dotted] = origin
    known = {key.name for key in section.keys}
    if not section.name:
        known |= {other.name for other in SECTIONS if other.name} | {"offsite"}
    for unknown in sorted(set(table) - known):
        problems.append(f"{prefix}{unknown}: unknown key")
    return values


def parse_config(
    data: Mapping[str, Any], source: str, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed TOML document (+ env overrides) into a `Config`.

    Raises ConfigError listing every problem, each naming its key (or the environment
    variable that set it).
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    origins: dict[str, str] = {}
    sections: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for section in SECTIONS:
        table: Any = data if not section.name else data.get(section.name, {})
        if not isinstance(table, dict):
            problems.append(f"{section.name}: expected table, got {type(table).__name__}")
            table = {}
        values = _read_section(section, table, environ, problems, origins)
        if section.name:
            sections[section.name] = section.target(**values)
        else:
            top = values
    metrics: MetricsConfig = sections["metrics"]
    if top.get("min_uid", 0) > top.get("max_uid", 0) and not any(
        problem.startswith(("min_uid", "max_uid")) for problem in problems
    ):
        problems.append(f"max_uid: must be >= min_uid ({top['min_uid']}); no user would be served")
    if bool(metrics.tls_cert) != bool(metrics.tls_key):
        problems.append("metrics.tls_key: tls_cert and tls_key must be set together")
    offsite = data.get("offsite")
    if offsite is not None and not isinstance(offsite, dict):
        problems.append(f"offsite: expected table, got {type(offsite).__name__}")
    elif offsite is not None:
        sections["offsite"] = parse_offsite(offsite, problems, origins)
    if problems:
        raise ConfigError(source, problems)
    top.update(sections, path=source, origins=tuple(sorted(origins.items())))
    return Config(**top)


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """-c PATH, else $T3BACKUPD_CONFIG, else /etc/t3backupd/config.toml."""
    environ = os.environ if environ is None else environ
    if cli_path:
        return Path(cli_path)
    if environ.get("T3BACKUPD_CONFIG"):
        return Path(environ["T3BACKUPD_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_config(
    path: Path,
    environ: Mapping[str, str] | None = None,
    reader: Callable[[Path], bytes] = Path.read_bytes,
) -> Config:
    """Read and validate the config file at `path`.

    Raises ConfigError (naming the file) if it cannot be read, is not TOML, or is invalid.
    """
    try:
        raw = reader(path)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read: {error.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), [f"not valid TOML: {error}"]) from None
    return parse_config(data, str(path), environ)
