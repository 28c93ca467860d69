"""Config parsing and validation (t3backupd.core.config): pure, files only under tmp_path."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from t3backupd.core.config import (
    Config,
    MetricsConfig,
    all_keys,
    load_config,
    parse_config,
    parse_listen,
    resolve_config_path,
)
from t3backupd.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
NO_ENV: dict[str, str] = {}


def problems_of(data: dict[str, Any], environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The problems parse_config reports for `data` (fails the test if it accepts it)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "/etc/t3backupd/config.toml", NO_ENV if environ is None else environ)
    return caught.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------


def test_defaults_equal_the_values_in_config_example_toml() -> None:
    loaded = load_config(EXAMPLE, environ=NO_ENV)
    assert loaded == dataclasses.replace(Config(), path=str(EXAMPLE))


def test_config_example_toml_holds_every_key_the_parser_accepts() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    in_example = [
        f"{name}.{key}" if isinstance(value, dict) else name
        for name, value in data.items()
        for key in (value if isinstance(value, dict) else [name])
    ]
    assert sorted(in_example) == sorted(all_keys())
    assert "verify.cron" in in_example


def test_origins_say_where_each_value_came_from() -> None:
    config = parse_config({"dest": "/srv/a", "retention": {"keep": 3}}, "f",
                          {"T3_BACKUP_KEEP": "9"})  # fmt: skip
    origins = dict(config.origins)
    assert origins["dest"] == "file"
    assert origins["retention.keep"] == "environment T3_BACKUP_KEEP"
    assert origins["snapshot.method"] == "default"
    assert config.retention.keep == 9
    assert set(origins) == set(all_keys())


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path, environ=NO_ENV) == dataclasses.replace(Config(), path=str(path))


def test_default_metrics_listen_on_loopback_only() -> None:
    assert Config().metrics.address == ("127.0.0.1", 9745)


# --- all problems at once -------------------------------------------------------------


def test_five_problems_are_reported_together_each_naming_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        min_uid = "1000"
        colour = "blue"
        [snapshot]
        method = "rsync"
        [retention]
        keep = 0
        [schedule]
        cron = "30 3 * *"
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=NO_ENV)
    error = caught.value
    assert len(error.problems) == 5
    for key in ("min_uid", "colour", "snapshot.method", "retention.keep", "schedule.cron"):
        assert sum(problem.startswith(f"{key}:") for problem in error.problems) == 1, key
    assert str(path) in str(error)
    assert error.source == str(path)
    assert error.exit_code == 2


# --- unknown keys and types -----------------------------------------------------------


def test_unknown_top_level_key_is_an_error_naming_it() -> None:
    assert problems_of({"dset": "/srv"}) == ("dset: unknown key",)


@pytest.mark.parametrize("section", ["schedule", "snapshot", "retention", "metrics", "log"])
def test_unknown_key_in_a_section_is_an_error_naming_section_and_key(section: str) -> None:
    assert problems_of({section: {"typo": 1}}) == (f"{section}.typo: unknown key",)


def test_unknown_section_is_an_error() -> None:
    assert problems_of({"backup": {"keep": 3}}) == ("backup: unknown key",)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"dest": 5}, "dest"),
        ({"min_uid": "1000"}, "min_uid"),
        ({"min_uid": 1000.0}, "min_uid"),
        ({"min_uid": True}, "min_uid"),
        ({"schedule": {"jitter_seconds": True}}, "schedule.jitter_seconds"),
        ({"schedule": {"catch_up": 1}}, "schedule.catch_up"),
        ({"schedule": {"catch_up": "yes"}}, "schedule.catch_up"),
        ({"snapshot": {"timeout_seconds": 1.5}}, "snapshot.timeout_seconds"),
        ({"snapshot": {"concurrency": False}}, "snapshot.concurrency"),
        ({"retention": {"keep": "14"}}, "retention.keep"),
        ({"retention": {"keep": True}}, "retention.keep"),
        ({"metrics": {"listen": 9745}}, "metrics.listen"),
        ({"schedule": "30 3 * * *"}, "schedule"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(data: dict[str, Any], key: str) -> None:
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith(f"{key}: expected ")


def test_bool_is_not_accepted_where_an_integer_is_expected_even_though_python_allows_it() -> None:
    (problem,) = problems_of({"retention": {"keep": True}})
    assert problem == "retention.keep: expected int, got bool"


# --- value checks ---------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused(keep: int) -> None:
    assert problems_of({"retention": {"keep": keep}}) == ("retention.keep: must be >= 1",)


def test_keep_daily_weekly_monthly_are_accepted_and_must_not_be_negative() -> None:
    config = parse_config(
        {"retention": {"keep": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}},
        "c",
        NO_ENV,
    )
    assert (config.retention.keep_daily, config.retention.keep_weekly) == (7, 4)
    assert config.retention.keep_monthly == 6
    problems = problems_of({"retention": {"keep_daily": -1, "keep_monthly": -2}})
    assert {problem.split(":")[0] for problem in problems} == {
        "retention.keep_daily",
        "retention.keep_monthly",
    }


@pytest.mark.parametrize("method", ["rsync", "Backup", ""])
def test_unknown_snapshot_method_is_refused(method: str) -> None:
    (problem,) = problems_of({"snapshot": {"method": method}})
    assert problem.startswith("snapshot.method: must be one of")


@pytest.mark.parametrize("method", ["backup", "vacuum"])
def test_both_snapshot_methods_are_accepted(method: str) -> None:
    assert parse_config({"snapshot": {"method": method}}, "c", NO_ENV).snapshot.method == method


@pytest.mark.parametrize("verify", ["fast", "integrity", "QUICK"])
def test_unknown_verify_mode_is_refused(verify: str) -> None:
    (problem,) = problems_of({"snapshot": {"verify": verify}})
    assert problem.startswith("snapshot.verify: must be one of")


@pytest.mark.parametrize("verify", ["quick", "full", "none"])
def test_every_documented_verify_mode_is_accepted(verify: str) -> None:
    assert parse_config({"snapshot": {"verify": verify}}, "c", NO_ENV).snapshot.verify == verify


@pytest.mark.parametrize("cron", ["30 3 * *", "0 30 3 * * *", "", "@reboot"])
def test_cron_with_wrong_field_count_is_refused(cron: str) -> None:
    (problem,) = problems_of({"schedule": {"cron": cron}})
    assert problem.startswith("schedule.cron:")
    assert "5 fields" in problem


def test_cron_with_a_value_out_of_range_is_refused_naming_the_key() -> None:
    (problem,) = problems_of({"schedule": {"cron": "60 3 * * *"}})
    assert problem.startswith("schedule.cron: minute")


def test_cron_with_unicode_superscript_digit_is_a_config_error_not_a_crash() -> None:
    (problem,) = problems_of({"schedule": {"cron": "\u00b2 3 * * *"}})
    assert problem.startswith("schedule.cron:")


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "Europe/Berlinn", "../etc/passwd", ""])
def test_unknown_timezone_is_refused(timezone: str) -> None:
    (problem,) = problems_of({"schedule": {"timezone": timezone}})
    assert problem.startswith("schedule.timezone: unknown time zone")


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Berlin", "America/New_York", "local"])
def test_iana_timezones_and_local_are_accepted(timezone: str) -> None:
    config = parse_config({"schedule": {"timezone": timezone}}, "c", NO_ENV)
    assert config.schedule.timezone == timezone


@pytest.mark.parametrize(
    "listen", ["nohost", "1.2.3.4:99999", "1.2.3.4:0", "1.2.3.4:http", "example.com:80", ":9745"]
)
def test_bad_metrics_listen_address_is_refused(listen: str) -> None:
    (problem,) = problems_of({"metrics": {"listen": listen}})
    assert problem.startswith("metrics.listen:")
    assert repr(listen) in problem


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("[::1]:9745", ("::1", 9745)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),  # noqa: S104 - parsing only, nothing binds
        ("localhost:9745", ("localhost", 9745)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_valid_listen_addresses_are_accepted(listen: str, address: tuple[str, int]) -> None:
    config = parse_config({"metrics": {"listen": listen}}, "c", NO_ENV)
    assert config.metrics.address == address
    assert parse_listen(listen) == address


def test_empty_listen_disables_metrics() -> None:
    config = parse_config({"metrics": {"listen": ""}}, "c", NO_ENV)
    assert config.metrics.address is None
    assert MetricsConfig(listen="").address is None


def test_tls_cert_without_tls_key_is_refused() -> None:
    (problem,) = problems_of({"metrics": {"tls_cert": "/etc/t3backupd/tls.crt"}})
    assert problem.startswith("metrics.tls_key:")
    assert "together" in problem


def test_tls_key_without_tls_cert_is_refused() -> None:
    (problem,) = problems_of({"metrics": {"tls_key": "/etc/t3backupd/tls.key"}})
    assert "together" in problem


def test_tls_cert_and_key_together_are_accepted() -> None:
    metrics = {"tls_cert": "/etc/t3backupd/tls.crt", "tls_key": "/etc/t3backupd/tls.key"}
    config = parse_config({"metrics": metrics}, "c", NO_ENV)
    assert config.metrics.tls_cert == "/etc/t3backupd/tls.crt"


@pytest.mark.parametrize("key", ["usermap", "dest"])
def test_relative_paths_are_refused(key: str) -> None:
    (problem,) = problems_of({key: "var/backups"})
    assert problem == f"{key}: must be an absolute path"


def test_min_uid_zero_is_refused_so_root_can_never_be_served() -> None:
    (problem,) = problems_of({"min_uid": 0})
    assert problem.startswith("min_uid: must be >= 1")


@pytest.mark.parametrize(
    "template",
    ["{home}/{db}", "{0}/state.sqlite", "{}/x", "{home.__class__}", "{home[x]}", "/x/{home!r}"],
)
def test_source_template_with_an_unknown_or_decorated_placeholder_is_refused(
    template: str,
) -> None:
    (problem,) = problems_of({"source": template})
    assert problem.startswith("source: bad placeholder")


def test_source_template_that_is_not_absolute_after_substitution_is_refused() -> None:
    (problem,) = problems_of({"source": "{user}/state.sqlite"})
    assert problem.startswith("source: must be an absolute path")


def test_source_template_substitutes_home_and_user() -> None:
    config = parse_config({"source": "/srv/t3/{user}/state.sqlite"}, "c", NO_ENV)
    assert config.source_for("alice", "/home/alice") == "/srv/t3/alice/state.sqlite"
    assert Config().source_for("bob", "/home/bob/") == "/home/bob/.t3/userdata/state.sqlite"


# --- environment overrides ------------------------------------------------------------


def test_legacy_environment_overrides_are_applied() -> None:
    environ = {"T3_BACKUP_DEST": "/srv/backups", "T3_BACKUP_KEEP": "30", "T3_BACKUP_TIMEOUT": "60"}
    config = parse_config({"dest": "/var/backups/t3-state"}, "c", environ)
    assert config.dest == "/srv/backups"
    assert config.retention.keep == 30
    assert config.snapshot.timeout_seconds == 60


def test_empty_environment_overrides_are_ignored() -> None:
    environ = {"T3_BACKUP_DEST": "", "T3_BACKUP_KEEP": "", "T3_BACKUP_TIMEOUT": ""}
    assert parse_config({}, "c", environ) == dataclasses.replace(Config(), path="c")


def test_environment_is_taken_from_the_environ_argument_not_the_process(tmp_path: Path) -> None:
    path = write(tmp_path, "[retention]\nkeep = 5\n")
    assert load_config(path, environ={"T3_BACKUP_KEEP": "9"}).retention.keep == 9
    assert load_config(path, environ=NO_ENV).retention.keep == 5


@pytest.mark.parametrize("value", ["many", "1.5", "14d"])
def test_non_integer_keep_override_is_reported(value: str) -> None:
    (problem,) = problems_of({}, {"T3_BACKUP_KEEP": value})
    assert "T3_BACKUP_KEEP" in problem
    assert "not an integer" in problem


def test_keep_override_below_one_is_refused_naming_the_variable_not_the_file() -> None:
    assert problems_of({"retention": {"keep": 14}}, {"T3_BACKUP_KEEP": "0"}) == (
        "environment T3_BACKUP_KEEP='0' (retention.keep): must be >= 1",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config({"retention": {"keep": 14}}, "/etc/t3backupd/config.toml",
                     {"T3_BACKUP_KEEP": "0"})  # fmt: skip
    assert "config.toml" not in str(caught.value)
    assert str(caught.value).startswith("environment T3_BACKUP_KEEP='0'")


def test_file_and_environment_problems_each_name_their_own_source() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"colour": 1}, "/etc/t3backupd/config.toml", {"T3_BACKUP_KEEP": "x"})
    assert str(caught.value) == (
        "/etc/t3backupd/config.toml: colour: unknown key; "
        "environment T3_BACKUP_KEEP='x': not an integer"
    )


def test_non_integer_or_zero_timeout_override_is_reported() -> None:
    (problem,) = problems_of({}, {"T3_BACKUP_TIMEOUT": "soon"})
    assert "T3_BACKUP_TIMEOUT" in problem
    assert problems_of({}, {"T3_BACKUP_TIMEOUT": "0"}) == (
        "environment T3_BACKUP_TIMEOUT='0' (snapshot.timeout_seconds): must be >= 1",
    )


def test_relative_dest_override_is_refused() -> None:
    (problem,) = problems_of({}, {"T3_BACKUP_DEST": "backups"})
    assert "T3_BACKUP_DEST" in problem


def test_environment_problems_are_reported_with_the_file_problems() -> None:
    problems = problems_of({"colour": 1}, {"T3_BACKUP_KEEP": "x"})
    assert len(problems) == 2


# --- loading the file -----------------------------------------------------------------


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=NO_ENV)
    assert str(path) in str(caught.value)
    assert caught.value.problems == ("file not found",)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "dest = /var/backups\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=NO_ENV)
    assert str(caught.value).startswith(f"{path}: not valid TOML")


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'dest = "/var/\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=NO_ENV)
    assert caught.value.problems == ("not UTF-8 text",)


def test_a_directory_instead_of_a_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ=NO_ENV)
    assert str(tmp_path) in str(caught.value)


def test_config_is_immutable() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dest = "/tmp/elsewhere"  # type: ignore[misc]


def test_config_path_comes_from_cli_then_environment_then_default() -> None:
    environ = {"T3BACKUPD_CONFIG": "/srv/t3.toml"}
    assert resolve_config_path("/x.toml", environ) == Path("/x.toml")
    assert resolve_config_path(None, environ) == Path("/srv/t3.toml")
    assert resolve_config_path(None, {}) == Path("/etc/t3backupd/config.toml")


@pytest.mark.parametrize(
    ("key", "value"),
    [("jitter_seconds", 86401), ("jitter_seconds", 10**12), ("misfire_grace_seconds", 10**12)],
)
def test_schedule_durations_out_of_range_are_refused_before_the_scheduler_sees_them(
    key: str, value: int
) -> None:
    # A huge jitter overflowed datetime inside APScheduler (a traceback, then a dead daemon).
    assert any(
        problem.startswith(f"schedule.{key}:")
        for problem in problems_of({"schedule": {key: value}})
    )
