"""Job specs built from the config (pure): one builder per worker action.

Each spec is complete before the root side prepares the user's directory, so what a
worker is asked to do never depends on what happened on disk.
"""

from __future__ import annotations

import os

from t3backupd.core.config import Config
from t3backupd.core.protocol import AdoptSpec, InventorySpec, RestoreSpec, SnapshotSpec, VerifySpec
from t3backupd.core.usermap import User

# Verifying reads every snapshot of a user; give it a few snapshot-lengths of time.
VERIFY_TIMEOUT_FACTOR = 4
INVENTORY_TIMEOUT_SECONDS = 60.0


def user_dir(config: Config, user: User) -> str:
    """`<dest>/<user>`: the one directory a user's worker works in."""
    return os.path.join(config.dest, user.name)


def snapshot_spec(
    config: Config,
    user: User,
    label: str | None = None,
    previous: tuple[str, int, str] | None = None,
    protect: tuple[str, ...] = (),
    protect_on_downgrade: tuple[str, ...] = (),
) -> SnapshotSpec:
    """One user's snapshot under `config`. `previous`: root's record (name, schema
    version, sha256) of the newest snapshot it published before; `protect`: names
    retention keeps (a backwards schema step's hold); `protect_on_downgrade`: what it
    keeps if this snapshot is the backwards step."""
    name, schema, digest = previous if previous is not None else (None, None, None)
    return SnapshotSpec(
        user=user.name,
        dest_dir=user_dir(config, user),
        source=config.source_for(user.name, user.home),
        method=config.snapshot.method,
        verify=config.snapshot.verify,
        timeout_seconds=float(config.snapshot.timeout_seconds),
        min_free_bytes=config.snapshot.min_free_bytes,
        label=label,
        keep=config.retention.keep,
        keep_hourly=config.retention.keep_hourly,
        keep_daily=config.retention.keep_daily,
        keep_weekly=config.retention.keep_weekly,
        keep_monthly=config.retention.keep_monthly,
        schema_version=config.snapshot.schema_version,
        previous=name,
        previous_schema=schema,
        previous_sha256=digest,
        keep_schema_guards=config.retention.keep_schema_guards,
        protect=protect,
        protect_on_downgrade=protect_on_downgrade,
    )


def inventory_spec(config: Config, user: User) -> InventorySpec:
    """List one user's snapshots."""
    return InventorySpec(
        user=user.name,
        dest_dir=user_dir(config, user),
        timeout_seconds=INVENTORY_TIMEOUT_SECONDS,
    )


def verify_spec(config: Config, user: User, latest_only: bool, quick: bool) -> VerifySpec:
    """Verify one user's snapshots (every one, or only the newest)."""
    return VerifySpec(
        user=user.name,
        dest_dir=user_dir(config, user),
        verify="quick" if quick else "full",
        latest_only=latest_only,
        timeout_seconds=float(config.snapshot.timeout_seconds * VERIFY_TIMEOUT_FACTOR),
    )


def restore_spec(
    config: Config,
    user: User,
    request: str,
    target: str = "",
    in_place: bool = False,
    check_only: bool = False,
    force: bool = False,
    safety_snapshot: bool = False,
) -> RestoreSpec:
    """A restore of `user`'s snapshot `request` to `target` or (`in_place`) their database."""
    return RestoreSpec(
        user=user.name,
        dest_dir=user_dir(config, user),
        source=config.source_for(user.name, user.home),
        snapshot=request,
        timeout_seconds=float(config.snapshot.timeout_seconds),
        target=target,
        in_place=in_place,
        check_only=check_only,
        force=force,
        safety_snapshot=safety_snapshot,
        method=config.snapshot.method,
        verify=config.snapshot.verify,
        min_free_bytes=config.snapshot.min_free_bytes,
    )


def adopt_spec(config: Config, user: User) -> AdoptSpec:
    """Write the missing checksums of one user's (legacy) snapshots, after a full check."""
    return AdoptSpec(
        user=user.name,
        dest_dir=user_dir(config, user),
        timeout_seconds=float(config.snapshot.timeout_seconds * VERIFY_TIMEOUT_FACTOR),
    )
