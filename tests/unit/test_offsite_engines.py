"""The registry of offsite engines: one entry per engine, each with its config rules row;
an engine name outside it is refused in one line naming the key, by the config parser
and by `make_engine` (never sent to another engine)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from t3backupd.core.config import parse_config
from t3backupd.core.errors import ConfigError, UsageError
from t3backupd.core.offsite_config import ENGINE_RULES, OFFSITE_KEYS, RESERVED_ENV
from t3backupd.root.offsite import ENGINES, make_engine
from t3backupd.root.offsite.cli_engine import CommandEngine

SECTION = {"repository": "/srv/r", "password_file": "/p"}


def test_every_engine_has_one_rules_row_and_a_key_for_its_binary() -> None:
    assert list(ENGINES) == list(ENGINE_RULES)
    for name, engine in ENGINES.items():
        assert issubclass(engine, CommandEngine) and engine.name == name
        assert name in OFFSITE_KEYS and name in ENGINE_RULES[name].own_keys
        assert set(ENGINE_RULES[name].reserved_environment) <= set(RESERVED_ENV)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_make_engine_builds_the_named_engine(name: str) -> None:
    config = parse_config({"offsite": {**SECTION, "engine": name}}, "/etc/t3/config.toml", {})
    assert type(make_engine(config)) is ENGINES[name]


def test_an_unknown_engine_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"offsite": {**SECTION, "engine": "rsync"}}, "/etc/t3/config.toml", {})
    assert caught.value.problems == ("offsite.engine: must be one of ('restic', 'borg')",)


def test_make_engine_never_sends_an_unknown_name_to_another_engine() -> None:
    config = parse_config({"offsite": SECTION}, "/etc/t3/config.toml", {})
    assert config.offsite is not None
    unknown = replace(config, offsite=replace(config.offsite, engine="rsync"))
    with pytest.raises(UsageError) as caught:
        make_engine(unknown)
    assert str(caught.value) == (
        "/etc/t3/config.toml: offsite.engine: must be one of ('restic', 'borg'), not 'rsync'"
    )
