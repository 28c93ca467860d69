"""Offsite copies: the engine interface (`engine`), the registry of engines (here), the
base of command-line engines (`cli_engine`), restic (`restic`), borg (`borg`), the
per-user job (`sync`), the check-plus-drill (`checks`) and root's record of checks
(`checkrecord`); `docs/design.md` names every module."""

from __future__ import annotations

from typing import Any

from t3backupd.core.config import Config
from t3backupd.core.errors import UsageError
from t3backupd.core.offsite_config import ENGINE_RULES
from t3backupd.root.offsite.borg import BorgEngine
from t3backupd.root.offsite.cli_engine import CommandEngine
from t3backupd.root.offsite.engine import Engine
from t3backupd.root.offsite.restic import ResticEngine

# The registry: `offsite.engine` -> its class. Its config rules row is the entry of the
# same name in core.offsite_config.ENGINE_RULES (core cannot import the root side).
ENGINES: dict[str, type[CommandEngine]] = {
    "restic": ResticEngine,
    "borg": BorgEngine,
}


def make_engine(config: Config, tracker: Any = None) -> Engine:
    """The engine `[offsite]` names. Raises UsageError when there is no `[offsite]` or
    it names no engine of the registry (the config parser refuses that first)."""
    if config.offsite is None:
        raise UsageError(f"{config.path}: no [offsite] section; offsite copies are off")
    engine = ENGINES.get(config.offsite.engine)
    if engine is None:
        raise UsageError(
            f"{config.path}: offsite.engine: must be one of {tuple(ENGINE_RULES)}, "
            f"not {config.offsite.engine!r}"
        )
    return engine(config.offsite, tracker)
