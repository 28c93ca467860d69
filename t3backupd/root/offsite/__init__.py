"""Offsite copies: the engine interface (`engine`), restic (`restic`), borg (`borg`), the
per-user job (`sync`), the check-plus-drill (`checks`) and root's record of checks
(`checkrecord`); `docs/design.md` names every module."""

from __future__ import annotations

from typing import Any

from t3backupd.core.config import Config
from t3backupd.core.errors import UsageError
from t3backupd.root.offsite.engine import Engine


def make_engine(config: Config, tracker: Any = None) -> Engine:
    """The engine `[offsite]` names. Raises UsageError when there is no `[offsite]`."""
    if config.offsite is None:
        raise UsageError(f"{config.path}: no [offsite] section; offsite copies are off")
    if config.offsite.engine == "borg":
        from t3backupd.root.offsite.borg import BorgEngine

        return BorgEngine(config.offsite, tracker)
    from t3backupd.root.offsite.restic import ResticEngine

    return ResticEngine(config.offsite, tracker)
