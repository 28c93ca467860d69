"""The offsite check: the engine's own consistency check plus every user's restore drill,
recorded in root's check record (`checkrecord`). The one run behind the daemon's check
cron and `t3backupd offsite check`; each caller only reports the result its own way."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from t3backupd.core.config import Config
from t3backupd.core.usermap import User
from t3backupd.root.offsite import checkrecord
from t3backupd.root.offsite.checkrecord import CheckRecord
from t3backupd.root.offsite.download import Drill, drill_user
from t3backupd.root.offsite.engine import Engine, OffsiteError


@dataclass(frozen=True)
class CheckResult:
    """One check: the engine's verdict (None = passed), each user's drill, when it ended,
    and the record as it stands after it."""

    subset: str  # offsite.check_read_data_subset
    error: OffsiteError | None
    drills: tuple[Drill, ...]
    when: float
    record: CheckRecord

    @property
    def ok(self) -> bool:
        return self.error is None and all(drill.ok for drill in self.drills)


def check_and_record(engine: Engine, config: Config, users: Sequence[User]) -> CheckResult:
    """Run `engine`'s check, then drill each of `users`, and record the outcome in
    `offsite.cache_dir`. Never raises for an offsite problem: it is in the result."""
    subset = config.offsite.check_read_data_subset if config.offsite is not None else ""
    error: OffsiteError | None = None
    # The check needs the repository exclusively: a lock left by an engine that died
    # (killed, or stopped within its first moments) would fail it as `locked`. Only
    # locks of dead processes on this host go, as at the start of every pass.
    with suppress(OffsiteError):
        engine.unlock_stale()
    try:
        engine.check(subset)
    except OffsiteError as caught:
        error = caught
    drills = tuple(drill_user(engine, config, user) for user in users)
    when = time.time()
    ok = error is None and all(drill.ok for drill in drills)
    if config.offsite is not None:
        record = checkrecord.record(config.offsite.cache_dir, ok, when)
    else:
        record = CheckRecord().after(ok, when)
    return CheckResult(subset, error, drills, when, record)
