"""Config: TOML file + the legacy environment overrides -> one immutable `Config`.

`parse_config` is pure (a dict in, a value out) and reports every problem at once;
`load_config` reads the file. Reload builds a new value and swaps it in.
"""

from __future__ import annotations

import ipaddress
import os
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from t3backupd.core.cron import CronError, parse_crontab
from t3backupd.core.errors import ConfigError
from t3backupd.core.retention import RetentionPolicy

DEFAULT_CONFIG_PATH = Path("/etc/t3backupd/config.toml")
SNAPSHOT_METHODS = ("backup", "vacuum")
VERIFY_MODES = ("quick", "full", "none")
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
    method: str = "backup"
    timeout_seconds: int = 900
    verify: str = "quick"
    concurrency: int = 1
    min_free_bytes: int = 0


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
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)

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


class _Section:
    """Reads typed keys out of one TOML table, recording problems instead of raising."""

    def __init__(self, table: Mapping[str, Any], prefix: str, problems: list[str]) -> None:
        self.table = table
        self.prefix = prefix
        self.problems = problems
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def get(self, name: str, kind: type, default: Any) -> Any:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        # bool is an int subclass in Python; TOML keeps them apart, so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problems.append(
                f"{self.key(name)}: expected {kind.__name__}, got {type(value).__name__}"
            )
            return default
        return value

    def check(self, name: str, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(f"{self.key(name)}: {message}")

    def finish(self) -> None:
        for unknown in sorted(set(self.table) - self.seen):
            self.problems.append(f"{self.key(unknown)}: unknown key")


def _table(root: _Section, name: str) -> Mapping[str, Any]:
    value = root.get(name, dict, {})
    return value if isinstance(value, dict) else {}


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


def parse_config(
    data: Mapping[str, Any], source: str, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed TOML document (+ env overrides) into a `Config`.

    Raises ConfigError listing every problem, each naming its key.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    root = _Section(data, "", problems)
    usermap = root.get("usermap", str, Config.usermap)
    dest = root.get("dest", str, Config.dest)
    source_template = root.get("source", str, Config.source)
    min_uid = root.get("min_uid", int, Config.min_uid)
    root.check("usermap", usermap.startswith("/"), "must be an absolute path")
    root.check("dest", dest.startswith("/"), "must be an absolute path")
    root.check("min_uid", min_uid >= 1, "must be >= 1 (root is never served)")
    template_problem = _check_source_template(source_template)
    root.check("source", template_problem is None, template_problem or "")

    schedule_section = _Section(_table(root, "schedule"), "schedule.", problems)
    defaults = ScheduleConfig()
    schedule = ScheduleConfig(
        cron=schedule_section.get("cron", str, defaults.cron),
        timezone=schedule_section.get("timezone", str, defaults.timezone),
        jitter_seconds=schedule_section.get("jitter_seconds", int, defaults.jitter_seconds),
        catch_up=schedule_section.get("catch_up", bool, defaults.catch_up),
        misfire_grace_seconds=schedule_section.get(
            "misfire_grace_seconds", int, defaults.misfire_grace_seconds
        ),
    )
    try:
        parse_crontab(schedule.cron)
    except CronError as error:
        schedule_section.check("cron", False, str(error))
    zone_problem = _check_timezone(schedule.timezone)
    schedule_section.check("timezone", zone_problem is None, zone_problem or "")
    schedule_section.check(
        "jitter_seconds", 0 <= schedule.jitter_seconds <= 86400, "must be 0-86400"
    )
    schedule_section.check(
        "misfire_grace_seconds",
        1 <= schedule.misfire_grace_seconds <= 31 * 86400,
        "must be 1-2678400 (31 days)",
    )
    schedule_section.finish()

    snapshot_section = _Section(_table(root, "snapshot"), "snapshot.", problems)
    snapshot_defaults = SnapshotConfig()
    snapshot = SnapshotConfig(
        method=snapshot_section.get("method", str, snapshot_defaults.method),
        timeout_seconds=snapshot_section.get(
            "timeout_seconds", int, snapshot_defaults.timeout_seconds
        ),
        verify=snapshot_section.get("verify", str, snapshot_defaults.verify),
        concurrency=snapshot_section.get("concurrency", int, snapshot_defaults.concurrency),
        min_free_bytes=snapshot_section.get(
            "min_free_bytes", int, snapshot_defaults.min_free_bytes
        ),
    )
    snapshot_section.check(
        "method", snapshot.method in SNAPSHOT_METHODS, f"must be one of {SNAPSHOT_METHODS}"
    )
    snapshot_section.check(
        "verify", snapshot.verify in VERIFY_MODES, f"must be one of {VERIFY_MODES}"
    )
    snapshot_section.check("concurrency", 1 <= snapshot.concurrency <= 64, "must be 1-64")
    snapshot_section.check("min_free_bytes", snapshot.min_free_bytes >= 0, "must be >= 0")
    snapshot_section.finish()

    retention_section = _Section(_table(root, "retention"), "retention.", problems)
    retention = RetentionPolicy(
        keep=retention_section.get("keep", int, RetentionPolicy.keep),
        keep_daily=retention_section.get("keep_daily", int, 0),
        keep_weekly=retention_section.get("keep_weekly", int, 0),
        keep_monthly=retention_section.get("keep_monthly", int, 0),
    )
    for name in ("keep_daily", "keep_weekly", "keep_monthly"):
        retention_section.check(name, getattr(retention, name) >= 0, "must be >= 0")
    retention_section.finish()

    metrics_section = _Section(_table(root, "metrics"), "metrics.", problems)
    metrics = MetricsConfig(
        listen=metrics_section.get("listen", str, MetricsConfig.listen),
        tls_cert=metrics_section.get("tls_cert", str, ""),
        tls_key=metrics_section.get("tls_key", str, ""),
    )
    if metrics.listen:
        try:
            parse_listen(metrics.listen)
        except ValueError as error:
            metrics_section.check("listen", False, f"{metrics.listen!r}: {error}")
    metrics_section.check(
        "tls_key",
        bool(metrics.tls_cert) == bool(metrics.tls_key),
        "tls_cert and tls_key must be set together",
    )
    metrics_section.finish()

    log_section = _Section(_table(root, "log"), "log.", problems)
    log = LogConfig(
        format=log_section.get("format", str, LogConfig.format),
        level=log_section.get("level", str, LogConfig.level),
    )
    log_section.check("format", log.format in LOG_FORMATS, f"must be one of {LOG_FORMATS}")
    log_section.check("level", log.level in LOG_LEVELS, f"must be one of {LOG_LEVELS}")
    log_section.finish()

    verify_section = _Section(_table(root, "verify"), "verify.", problems)
    verify = VerifyConfig(cron=verify_section.get("cron", str, ""))
    if verify.cron:
        try:
            parse_crontab(verify.cron)
        except CronError as error:
            verify_section.check("cron", False, str(error))
    verify_section.finish()
    root.finish()

    config = Config(
        path=source,
        usermap=usermap,
        dest=dest,
        source=source_template,
        min_uid=min_uid,
        schedule=schedule,
        snapshot=snapshot,
        retention=retention,
        metrics=metrics,
        log=log,
        verify=verify,
    )
    config = _apply_environment(config, environ, problems)
    if config.retention.keep < 1:
        problems.append("retention.keep: must be >= 1")
    if config.snapshot.timeout_seconds < 1:
        problems.append("snapshot.timeout_seconds: must be >= 1")
    if problems:
        raise ConfigError(source, problems)
    return config


def _env_int(environ: Mapping[str, str], name: str, problems: list[str]) -> int | None:
    text = environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        problems.append(f"environment {name}={text!r}: not an integer")
        return None


def _apply_environment(config: Config, environ: Mapping[str, str], problems: list[str]) -> Config:
    """The legacy script's overrides: T3_BACKUP_DEST, T3_BACKUP_KEEP, T3_BACKUP_TIMEOUT."""
    from dataclasses import replace

    dest = environ.get("T3_BACKUP_DEST")
    if dest:
        if dest.startswith("/"):
            config = replace(config, dest=dest)
        else:
            problems.append(f"environment T3_BACKUP_DEST={dest!r}: must be an absolute path")
    keep = _env_int(environ, "T3_BACKUP_KEEP", problems)
    if keep is not None:
        config = replace(config, retention=replace(config.retention, keep=keep))
    timeout = _env_int(environ, "T3_BACKUP_TIMEOUT", problems)
    if timeout is not None:
        config = replace(config, snapshot=replace(config.snapshot, timeout_seconds=timeout))
    return config


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
